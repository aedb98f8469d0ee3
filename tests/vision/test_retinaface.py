import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.inference.backend import load_model
from app.vision.image_io import read_image
from app.vision.retinaface import (
    BGR_MEAN,
    MAX_ENLARGED_SIDE,
    Detections,
    RetinaFacePostprocessor,
    decode_retinaface,
    detector_input_hw,
    fitted_input_hw,
    letterbox,
    letterbox_scale,
    nms,
    prior_boxes,
    split_outputs,
)
from tests.support.shared_data import SHARED_FACES, SHARED_IDENTITIES

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"


@pytest.fixture(scope="module")
def detector():
    return load_model(DETECTOR)


def detect(detector, image: np.ndarray, size: int = 640, threshold: float = 0.6) -> Detections:
    blob, scale = letterbox(image, size)
    loc, conf, landms = split_outputs(detector.run(blob[None]))
    return decode_retinaface(
        loc[0], conf[0], landms[0], scale, (size, size), threshold, 0.4, image.shape[1::-1]
    )


# --- priors -------------------------------------------------------------------------------------------


def test_prior_count_and_order_for_640():
    priors = prior_boxes((640, 640))
    assert priors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4) == (16800, 4)
    # level 0, row 0, col 0: both sizes share the centre; then col 1
    np.testing.assert_allclose(priors[0], [4 / 640, 4 / 640, 16 / 640, 16 / 640])
    np.testing.assert_allclose(priors[1], [4 / 640, 4 / 640, 32 / 640, 32 / 640])
    np.testing.assert_allclose(priors[2], [12 / 640, 4 / 640, 16 / 640, 16 / 640])
    np.testing.assert_allclose(priors[2 * 80], [4 / 640, 12 / 640, 16 / 640, 16 / 640])  # row 1
    first_level1 = 2 * 80 * 80
    np.testing.assert_allclose(priors[first_level1], [8 / 640, 8 / 640, 64 / 640, 64 / 640])
    np.testing.assert_allclose(priors[-1], [624 / 640, 624 / 640, 512 / 640, 512 / 640])


def test_priors_are_normalised_per_axis_and_use_ceil_grids():
    h, w = 300, 500
    priors = prior_boxes((h, w))
    expected = sum(2 * math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32))
    assert priors.shape[0] == expected
    np.testing.assert_allclose(priors[0], [4 / w, 4 / h, 16 / w, 16 / h])
    assert not priors.flags.writeable  # cached: callers must not change it
    assert prior_boxes((h, w)) is priors


def test_prior_count_matches_the_model_at_odd_sizes(detector):
    for h, w in [(300, 300), (333, 517)]:
        loc, conf, _ = detector.run(np.zeros((1, 3, h, w), np.float32))
        assert conf.shape[1] == prior_boxes((h, w)).shape[0]


# --- NMS ----------------------------------------------------------------------------------------------


def test_nms_hand_cases():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # A
            [1, 0, 11, 10],  # B: IoU with A = 90/110 = 0.818
            [20, 20, 30, 30],  # C: disjoint
            [0, 0, 10, 5],  # D: inside A, IoU 0.5
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.95, 0.5, 0.8], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]  # B beats A; D overlaps B by 45/105 = 0.43 > 0.4
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]  # D's IoU with B is 0.43 <= 0.5: kept
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 3, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []


def _nms_one_at_a_time(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The textbook greedy NMS (one kept box against the rest at a time): what `nms` must equal."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


@pytest.mark.parametrize("seed", range(40))
def test_nms_blocks_keep_what_one_at_a_time_keeps(seed):
    # Clusters of jittered boxes around a few faces (what the detector hands over), tied scores, boxes of
    # zero area and with NaN corners, and more candidates than one block of the blocked pass.
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 400))
    centres = rng.uniform(0, 1000, (int(rng.integers(1, 30)), 2))
    which = rng.integers(0, len(centres), count)
    size = rng.uniform(5, 120, (count, 1))
    jitter = rng.normal(0, 0.15, (count, 4)) * size
    boxes = np.concatenate([centres[which] - size / 2, centres[which] + size / 2], axis=1) + jitter
    boxes = boxes.astype(np.float32)
    scores = np.round(rng.uniform(0.05, 1.0, count), 2).astype(np.float32)  # many ties
    if seed % 4 == 0:
        boxes[rng.integers(0, count, 3), 2:] = boxes[rng.integers(0, count, 3), :2]  # degenerate boxes
    if seed % 8 == 1:
        boxes[rng.integers(0, count), 1] = np.nan
    for threshold in (0.3, 0.4, 0.7):
        assert nms(boxes, scores, threshold).tolist() == _nms_one_at_a_time(boxes, scores, threshold).tolist()


# --- decode -------------------------------------------------------------------------------------------


def test_decode_with_zero_offsets_returns_the_prior_box():
    hw = (64, 64)
    priors = prior_boxes(hw)
    p = priors.shape[0]
    loc = np.zeros((p, 4), np.float32)
    landms = np.zeros((p, 10), np.float32)
    conf = np.zeros((p, 2), np.float32)
    conf[:, 0] = 1.0
    idx = 2 * 8 * 8 + 2 * 4 * 4 + 1  # level 2 (stride 32), cell (0,0), size 512
    conf[3, 1] = 0.95  # level 0, cell (0,1), size 32: centre (12, 4)
    conf[idx, 1] = 0.7
    det = decode_retinaface(loc, conf, landms, 0.5, hw, 0.6, 0.4, (1000, 1000))
    assert len(det) == 2
    np.testing.assert_allclose(det.scores, [0.95, 0.7])
    # input pixels / scale 0.5 = source pixels
    # prior (12,4) size 32 in input pixels -> [-8,-24,56,40] in source pixels, clipped at the image edge
    np.testing.assert_allclose(det.boxes[0], [0, 0, 56, 40])
    np.testing.assert_allclose(det.landmarks[0], np.tile([[24.0, 8.0]], (5, 1)))


def test_decode_applies_variances():
    hw = (64, 64)
    p = prior_boxes(hw).shape[0]
    loc = np.zeros((p, 4), np.float32)
    landms = np.zeros((p, 10), np.float32)
    conf = np.zeros((p, 2), np.float32)
    conf[0, 1] = 0.9  # centre (4,4), size 16
    loc[0] = [1.0, -1.0, np.log(2) / 0.2, 0.0]  # dx = 0.1*16, dy = -0.1*16, w doubled
    landms[0] = [1.0, 0.0] * 5
    det = decode_retinaface(loc, conf, landms, 1.0, hw, 0.5, 0.4, (64, 64))
    cx, cy, w, h = 4 + 1.6, 4 - 1.6, 32, 16
    expected = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    np.testing.assert_allclose(det.boxes[0], np.clip(expected, 0, 64), atol=1e-5)
    np.testing.assert_allclose(det.landmarks[0], np.tile([[5.6, 4.0]], (5, 1)), atol=1e-5)


def test_decode_rejects_a_wrong_input_size():
    p = prior_boxes((64, 64)).shape[0]
    with pytest.raises(ValueError, match="implies"):
        decode_retinaface(
            np.zeros((p, 4)), np.zeros((p, 2)), np.zeros((p, 10)), 1.0, (96, 96), 0.5, 0.4, (96, 96)
        )


def test_nothing_above_threshold_gives_empty_detections():
    p = prior_boxes((64, 64)).shape[0]
    det = decode_retinaface(
        np.zeros((1, p, 4)), np.zeros((1, p, 2)), np.zeros((1, p, 10)), 1.0, (64, 64), 0.5, 0.4, (64, 64)
    )
    assert len(det) == 0 and det.boxes.shape == (0, 4) and det.landmarks.shape == (0, 5, 2)
    assert det.largest() is None


def test_candidate_rows_decode_to_the_same_faces_as_the_full_outputs(detector):
    image = read_image(SHARED_FACES / "obama-720p.jpg")
    blob, scale = letterbox(image, 640)
    loc, conf, landms = (o[0] for o in split_outputs(detector.run(blob[None])))
    index = np.flatnonzero(conf[:, 1] > 0.01)  # what the detection stage sends: the rows above its floor
    assert 0 < len(index) < len(conf) // 10
    for threshold in (0.01, 0.05, 0.6):
        full = decode_retinaface(loc, conf, landms, scale, (640, 640), threshold, 0.4, image.shape[1::-1])
        got = decode_retinaface(
            loc[index],
            conf[index],
            landms[index],
            scale,
            (640, 640),
            threshold,
            0.4,
            image.shape[1::-1],
            index,
        )
        assert len(got) == len(full) > 0
        np.testing.assert_array_equal(got.boxes, full.boxes)
        np.testing.assert_array_equal(got.scores, full.scores)
        np.testing.assert_array_equal(got.landmarks, full.landmarks)


def test_decode_rejects_a_prior_index_that_does_not_fit_the_rows():
    rows = (np.zeros((3, 4)), np.full((3, 2), 0.9), np.zeros((3, 10)))
    p = prior_boxes((64, 64)).shape[0]
    with pytest.raises(ValueError, match="prior index"):
        decode_retinaface(*rows, 1.0, (64, 64), 0.5, 0.4, (64, 64), np.arange(2))
    with pytest.raises(ValueError, match="prior index"):
        decode_retinaface(*rows, 1.0, (64, 64), 0.5, 0.4, (64, 64), np.array([0, 1, p]))


# --- letterbox ----------------------------------------------------------------------------------------


def test_letterbox_scales_longest_side_and_pads_bottom_right():
    image = np.full((100, 200, 3), 200, np.uint8)
    image[:, :, 0] = 50
    blob, scale = letterbox(image, 64)
    assert blob.shape == (3, 64, 64) and blob.dtype == np.float32
    assert scale == pytest.approx(64 / 200)
    expected = np.broadcast_to((np.array([50, 200, 200]) - BGR_MEAN)[:, None, None], (3, 32, 64))
    np.testing.assert_allclose(blob[:, :32, :], expected)
    np.testing.assert_array_equal(blob[:, 32:, :], 0.0)  # padding = the mean colour


def test_letterbox_upscales_small_images_and_writes_in_place():
    image = np.random.default_rng(1).integers(0, 255, (30, 20, 3), np.uint8)
    out = np.full((2, 3, 60, 60), 7.0, np.float32)
    blob, scale = letterbox(image, (60, 60), out=out[1])
    assert blob.base is out or blob is out[1] or np.shares_memory(blob, out)
    assert scale == pytest.approx(2.0)
    expected = cv2.resize(image, (40, 60), interpolation=cv2.INTER_LINEAR).astype(np.float32) - BGR_MEAN
    np.testing.assert_allclose(out[1, :, :, :40], expected.transpose(2, 0, 1))
    np.testing.assert_array_equal(out[1, :, :, 40:], 0.0)
    np.testing.assert_array_equal(out[0], 7.0)  # the other batch row is untouched


def test_a_larger_input_enlarges_no_image_beyond_a_640_long_side():
    assert MAX_ENLARGED_SIDE == 640
    assert letterbox_scale((150, 150), (960, 960)) == pytest.approx(640 / 150)  # as at 640, not 960 / 150
    assert letterbox_scale((150, 150), (640, 640)) == pytest.approx(640 / 150)
    assert letterbox_scale((720, 1280), (736, 1280)) == 1.0  # a big frame: up to its own resolution
    assert letterbox_scale((720, 1280), (1088, 1920)) == 1.0
    assert letterbox_scale((720, 1280), (384, 640)) == 0.5  # shrinking is never limited
    # the fitted input follows: a 640x360 clip at DET_SIZE 1280 needs no more than its own 640x384
    assert fitted_input_hw([(360, 640)], 1280) == (384, 640)
    assert fitted_input_hw([(720, 1280)], 1280) == (736, 1280)
    assert fitted_input_hw([(720, 1280), (360, 640)], 1280) == (736, 1280)
    _, scale = letterbox(np.zeros((150, 150, 3), np.uint8), 960)
    assert scale == pytest.approx(640 / 150)


def test_a_tight_face_photo_gives_the_same_face_at_a_larger_input(detector):
    """A 150x150 identity photo: at a 960 input unlimited enlargement made its face ~900 px, beyond the
    largest priors (512), and the box came out ~30 % too small; now 960 finds the face 640 finds."""
    image = read_image(SHARED_IDENTITIES / "bbt" / "amy" / "face-api-amy1.png")
    assert image.shape[:2] == (150, 150)
    at_640, at_960 = detect(detector, image, 640), detect(detector, image, 960)
    assert len(at_640) == len(at_960) == 1
    height = at_640.boxes[0, 3] - at_640.boxes[0, 1]
    assert height > 120  # the face fills the photo
    np.testing.assert_allclose(at_960.boxes[0], at_640.boxes[0], atol=1.0)
    np.testing.assert_allclose(at_960.landmarks[0], at_640.landmarks[0], atol=1.0)


def test_detector_input_hw_follows_the_model(detector):
    assert detector_input_hw(detector, 480) == (480, 480)


# --- real images --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "faces"),
    [
        ("two_people.jpg", 2),
        ("obama-240p.jpg", 1),
        ("obama-480p.jpg", 1),
        ("obama-720p.jpg", 1),
        ("obama-1080p.jpg", 1),
        ("knn_examples/test/kit_with_rose.jpg", 2),
    ],
)
def test_face_counts_on_real_images(detector, name, faces):
    image = read_image(SHARED_FACES / name)
    det = detect(detector, image)
    assert len(det) == faces
    assert np.all(det.scores > 0.9)
    # frontal faces: the first landmark (image-left eye) has the smaller x, eyes above the mouth
    assert np.all(det.landmarks[:, 0, 0] < det.landmarks[:, 1, 0])
    assert np.all(det.landmarks[:, 3, 0] < det.landmarks[:, 4, 0])
    assert np.all(det.landmarks[:, :2, 1].max(1) < det.landmarks[:, 3:, 1].min(1))
    # landmarks lie inside their boxes
    inside = (det.landmarks >= det.boxes[:, None, :2] - 2) & (det.landmarks <= det.boxes[:, None, 2:] + 2)
    assert inside.all()


def test_obama_and_biden_are_both_found(detector):
    # The photo also shows a child's face, partly hidden, at the bottom right: a true third face.
    image = read_image(SHARED_FACES / "knn_examples" / "test" / "obama_and_biden.jpg")
    det = detect(detector, image)
    assert len(det) == 3
    centres_x = ((det.boxes[:, 0] + det.boxes[:, 2]) / 2)[:2]
    assert sorted(centres_x.round(-2).tolist()) == [800.0, 1200.0]  # Biden left, Obama right
    child = det.boxes[2]
    assert child[1] > 1000 and det.areas()[2] < det.areas()[:2].min()


def test_boxes_agree_across_resolutions(detector):
    boxes = []
    for name in ("obama-240p.jpg", "obama-480p.jpg", "obama-720p.jpg", "obama-1080p.jpg"):
        image = read_image(SHARED_FACES / name)
        det = detect(detector, image)
        boxes.append(det.boxes[0] / image.shape[1])  # in units of image width
    boxes = np.array(boxes)
    assert np.abs(boxes - boxes[-1]).max() < 0.01


@pytest.mark.parametrize(
    "name", ["edge/32bit.png", "edge/obama_partial_face.jpg", "edge/obama_partial_face2.jpg"]
)
def test_edge_images_run(detector, name):
    image = read_image(SHARED_FACES / name)
    det = detect(detector, image)
    assert len(det) >= 1
    h, w = image.shape[:2]
    assert np.all((det.boxes >= 0) & (det.boxes <= [w, h, w, h]))


def test_batched_decode_matches_single_images(detector):
    images = [read_image(SHARED_FACES / n) for n in ("two_people.jpg", "obama-240p.jpg")]
    blobs, scales = zip(*(letterbox(im, 640) for im in images), strict=True)
    outputs = detector.run(np.stack(blobs))
    post = RetinaFacePostprocessor((640, 640), 0.6, 0.4)
    batched = post(outputs, scales, [im.shape[1::-1] for im in images])
    for image, det in zip(images, batched, strict=True):
        single = detect(detector, image)
        assert len(det) == len(single)
        np.testing.assert_allclose(det.boxes, single.boxes, atol=0.05)
        np.testing.assert_allclose(det.landmarks, single.landmarks, atol=0.05)


def test_detections_select_and_largest(detector):
    det = detect(detector, read_image(SHARED_FACES / "two_people.jpg"))
    big = det.largest()
    assert det.areas()[big] == det.areas().max()
    one = det.select([big])
    assert len(one) == 1 and one.landmarks.shape == (1, 5, 2)


def test_min_face_keeps_faces_whose_short_side_is_large_enough():
    boxes = np.array([[0, 0, 40, 60], [10, 10, 29, 90], [5, 5, 105, 25], [0, 0, 20, 20]], np.float32)
    found = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32), np.zeros((4, 5, 2), np.float32))
    assert found.at_least(0) is found
    kept = found.at_least(20)  # short sides 40, 19, 20, 20
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6]) and kept.landmarks.shape == (3, 5, 2)
    assert len(found.at_least(41)) == 0 and len(Detections.empty().at_least(10)) == 0
