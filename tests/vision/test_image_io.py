import cv2
import numpy as np
import pytest

from app.errors import UserError
from app.vision.image_io import read_image, to_bgr_uint8
from tests.support.shared_data import SHARED_FACES


def test_rgba_png_becomes_bgr():
    image = read_image(SHARED_FACES / "edge" / "32bit.png")
    raw = cv2.imread(str(SHARED_FACES / "edge" / "32bit.png"), cv2.IMREAD_UNCHANGED)
    assert raw.shape[2] == 4
    assert image.shape == raw.shape[:2] + (3,) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, raw[:, :, :3])


def test_jpeg_reads_as_bgr_uint8():
    image = read_image(SHARED_FACES / "two_people.jpg")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_gray_png_becomes_three_equal_channels(tmp_path):
    gray = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (8, 256, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[:, :, c], gray)


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    deep = np.zeros((4, 4, 3), np.uint16)
    deep[0, 0] = [65535, 32896, 0]
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 128, 0]


def test_float_and_two_channel_arrays_convert():
    assert to_bgr_uint8(np.full((2, 2), 0.5, np.float32))[0, 0].tolist() == [128, 128, 128]
    gray_alpha = np.zeros((2, 2, 2), np.uint8)
    gray_alpha[..., 0] = 9
    assert to_bgr_uint8(gray_alpha)[1, 1].tolist() == [9, 9, 9]


def test_missing_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    with pytest.raises(UserError, match="bad.jpg is empty or not a readable image"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.png"):
        read_image(empty)
