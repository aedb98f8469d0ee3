"""Pixel formats of ring frames: NV12 conversions against OpenCV's full-frame conversion, the format-free
FramePixels, and the scene-cut detector deciding the same cuts on NV12 frames of a real clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.pipeline.frame_ring import slot_shape
from app.stages.recognize import SceneCutDetector
from app.vision.pixel_format import (
    BGR,
    NV12,
    FramePixels,
    bgr_to_nv12,
    frame_hw,
    nv12_every,
    nv12_region_to_bgr,
    nv12_to_bgr,
    write_bgr,
)
from tests.support.shared_data import hamilton_frames as hamilton


@pytest.fixture(scope="module")
def nv12_1080p() -> np.ndarray:
    """A 1080p frame of the clip as NV12, noise added so every pixel's chroma matters."""
    frame = hamilton(100, 101, (1920, 1080))[0]
    noise = np.random.default_rng(0).integers(-20, 21, frame.shape)
    return bgr_to_nv12(np.clip(frame.astype(np.int64) + noise, 0, 255).astype(np.uint8))


def test_slot_shapes_and_frame_sizes_of_both_formats():
    assert slot_shape(BGR, (1080, 1920, 3)) == (1080, 1920, 3)
    assert slot_shape(NV12, (1080, 1920, 3)) == (1620, 1920)
    assert frame_hw(NV12, (1620, 1920)) == (1080, 1920) == frame_hw(BGR, (1080, 1920, 3))
    with pytest.raises(ValueError, match="even"):
        slot_shape(NV12, (1081, 1920, 3))
    with pytest.raises(ValueError, match="not one of"):
        slot_shape("rgb", (1080, 1920, 3))


def test_bgr_to_nv12_is_opencvs_i420_interleaved_and_converts_back_close():
    frame = hamilton(100, 101)[0]  # 640x360
    nv12 = bgr_to_nv12(frame)
    h, w = frame.shape[:2]
    i420 = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    assert nv12.shape == (h * 3 // 2, w) and np.array_equal(nv12[:h], i420[:h])
    uv = nv12[h:].reshape(h // 2, w // 2, 2)
    assert np.array_equal(uv[..., 0].reshape(-1), i420[h:].reshape(-1)[: h * w // 4])  # U first
    assert np.array_equal(uv[..., 1].reshape(-1), i420[h:].reshape(-1)[h * w // 4 :])
    back = nv12_to_bgr(nv12)
    assert np.array_equal(back, cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12))
    # Chroma is subsampled 2x2: close on average, not exact.
    assert np.abs(back.astype(np.int64) - frame).mean() < 3.0


def test_a_region_equals_the_same_region_of_the_full_conversion(nv12_1080p):
    full = nv12_to_bgr(nv12_1080p)
    boxes = [(0, 0, 1920, 1080), (301, 77, 502, 290), (300, 76, 500, 290), (1, 1, 2, 2), (-40, -10, 100, 60),
             (1850, 1001, 2000, 1200), (1919, 1079, 1920, 1080)]  # fmt: skip
    for x0, y0, x1, y1 in boxes:
        region = nv12_region_to_bgr(nv12_1080p, x0, y0, x1, y1)
        want = full[max(0, y0) : min(1080, y1), max(0, x0) : min(1920, x1)]
        assert region.shape == want.shape and np.array_equal(region, want), (x0, y0, x1, y1)
    assert nv12_region_to_bgr(nv12_1080p, 500, 500, 500, 520).shape == (20, 0, 3)  # empty, never an error


@pytest.mark.parametrize(("size", "step"), [((1920, 1080), 15), ((1280, 720), 10), ((640, 360), 5),
                                            ((1920, 1080), 7), ((64, 36), 1)])  # fmt: skip
def test_the_thumbnail_is_the_strided_slice_of_the_full_conversion(nv12_1080p, size, step):
    w, h = size
    nv12 = bgr_to_nv12(cv2.resize(nv12_to_bgr(nv12_1080p), size))
    sample = nv12_every(nv12, step)
    assert sample.flags.c_contiguous and np.array_equal(sample, nv12_to_bgr(nv12)[::step, ::step])
    assert sample.shape == (len(range(0, h, step)), len(range(0, w, step)), 3)


def test_frame_pixels_read_a_bgr_slot_in_place_and_convert_nv12_once(nv12_1080p):
    bgr = nv12_to_bgr(nv12_1080p)
    plain = FramePixels(bgr)
    assert plain.bgr() is bgr and plain.shape == (1080, 1920, 3)
    assert np.shares_memory(plain.region(10, 10, 50, 50), bgr)  # a view, no copy
    copy = plain.bgr_copy()
    assert np.array_equal(copy, bgr) and not np.shares_memory(copy, bgr)
    pixels = FramePixels(nv12_1080p, NV12)
    assert pixels.shape == (1080, 1920, 3) and pixels.hw == (1080, 1920)
    assert np.array_equal(pixels.region(100, 200, 300, 333), bgr[200:333, 100:300])
    assert np.array_equal(pixels.every(15), bgr[::15, ::15])
    out = np.empty_like(bgr)
    first = pixels.bgr(out=out)
    assert first is out and np.array_equal(first, bgr)
    assert pixels.bgr() is first  # converted once a frame
    assert np.array_equal(pixels.bgr_copy(), bgr) and pixels.bgr_copy() is not first


def test_write_bgr_stores_a_picture_in_the_slots_format():
    frame = hamilton(100, 101)[0]
    slot = np.zeros(slot_shape(NV12, frame.shape), np.uint8)
    write_bgr(slot, NV12, frame)
    assert np.array_equal(slot, bgr_to_nv12(frame))
    plain = np.zeros_like(frame)
    write_bgr(plain, BGR, frame)
    assert np.array_equal(plain, frame)


def test_scene_cuts_on_nv12_frames_of_the_clip_are_those_of_bgr_frames():
    """The Hamilton clip at 1080p (as the GPU host's cameras), frames 60-130: the cut at 82 and the camera
    moves around it. The NV12 thumbnail is the full conversion's, so the detector sees the BGR frames of
    what NVDEC decoded; against the original BGR (chroma subsampled away) its differences move little."""
    frames = hamilton(60, 130, (1920, 1080))
    on_bgr, on_nv12 = SceneCutDetector(), SceneCutDetector()
    cuts_bgr, cuts_nv12, diffs = [], [], []
    for index, frame in enumerate(frames, start=60):
        nv12 = FramePixels(bgr_to_nv12(frame), NV12)
        if on_bgr.is_cut(frame):
            cuts_bgr.append(index)
        if on_nv12.is_cut(nv12):
            cuts_nv12.append(index)
        diffs.append(float(np.abs(on_bgr._previous - on_nv12._previous).mean()))
    assert cuts_bgr == cuts_nv12 == [82]
    # Mean grey-level gap of the two 64x36 thumbnails of a frame, against a cut threshold of 20.
    assert max(diffs) < 1.0
