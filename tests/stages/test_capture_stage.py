"""Capture stage on files: every frame into the ring in order, pacing at the file's FPS, frame limits, waiting
(never dropping) when the ring is full."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.errors import UserError
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.stage_runner import NOTHING_YET
from app.stages.capture import CaptureStage
from app.stages.sources import parse_source
from tests.stages.stage_chain import read_all, ring_of
from tests.support.shared_data import HAMILTON


def test_file_frames_arrive_in_order_with_their_pixels_and_times():
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), max_speed=True, max_frames=40)
    info = capture.setup()
    assert info.frame_shape == (360, 640, 3) and info.live is False and info.frame_count == 275
    fps = info.fps
    with ring_of(info.frame_shape) as (ring, handle):
        capture.frames = handle
        got = read_all(capture, ring)
        capture.close()
    assert [m.frame_index for m, _ in got] == list(range(40))
    assert capture.end_reason == "frame limit reached (40)"
    reference = cv2.VideoCapture(str(HAMILTON))
    for meta, pixels in got:
        ok, expected = reference.read()
        assert ok and np.array_equal(pixels, expected)
        assert meta.source_time == pytest.approx(meta.frame_index / fps)
        assert meta.stamps[0].stage == "capture" and meta.stamps[0].end >= meta.stamps[0].start
    reference.release()


class FakeClock:
    """Time that moves only when the stage sleeps: pacing measured in the stage's own time, so the test does
    not depend on how fast this machine decodes."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def paced(fps_target: float = 0.0) -> tuple[list, float, FakeClock]:
    """16 frames of the clip read by a paced capture stage on a fake clock: (metas, fps, clock)."""
    clock = FakeClock()
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), fps_target=fps_target,
                           max_frames=16, clock=clock, sleep=clock.sleep)  # fmt: skip
    info = capture.setup()
    with ring_of(info.frame_shape) as (ring, handle):
        capture.frames = handle
        got = [meta for meta, _ in read_all(capture, ring)]
        capture.close()
    return got, info.fps, clock


def test_files_are_paced_at_their_own_fps_or_the_target():
    for target in (0.0, 100.0):
        got, fps, clock = paced(target)
        rate = target or fps
        published = [meta.stamps[0].end for meta in got]
        assert [m.frame_index for m in got] == list(range(16))
        # Frame i goes out i frame periods after the first, never sooner (the clock only moves in sleeps).
        assert published == pytest.approx([published[0] + i / rate for i in range(16)], abs=1e-6)
        assert clock.now == pytest.approx(published[0] + 15 / rate, abs=1e-6)  # 16 frames, 15 intervals


def test_end_of_file_and_first_frame_timing():
    clock = FakeClock()
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), max_speed=True, clock=clock,
                           sleep=clock.sleep)  # fmt: skip
    info = capture.setup()
    clock.now += 30.0  # models loading elsewhere: the first frame was read in setup, long before the start
    with ring_of(info.frame_shape) as (ring, handle):
        capture.frames = handle
        first = capture.produce()
        assert first.meta.stamps[0].end == clock.now  # stamped when published, not when read
        ring.claim(first.meta.slot, first.meta.seq)
        ring.release(first.meta.slot, first.meta.seq)
        rest = read_all(capture, ring)
        capture.close()
        # The slot taken for the frame after the last one went back free, not counted as a dropped frame.
        assert "writing" not in ring.states() and ring.dropped == 0
    assert len(rest) == 274 and capture.end_reason == "end of stream" and capture.frames_read == 275


def test_a_full_ring_makes_a_file_wait_and_lose_nothing():
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), max_speed=True, max_frames=10)
    info = capture.setup()
    with ring_of(info.frame_shape, slots=3) as (ring, handle):
        capture.frames = handle
        held = []
        while len(held) < 3:
            msg = capture.produce()
            if msg is not NOTHING_YET:
                held.append(msg.meta)
        assert capture.produce() is NOTHING_YET  # full: the next frame waits in the stage
        assert ring.dropped == 0
        for meta in held:
            ring.release(meta.slot, meta.seq)
        rest = read_all(capture, ring)
        capture.close()
        assert ring.dropped == 0
    assert [m.frame_index for m in held] + [m.frame_index for m, _ in rest] == list(range(10))


def test_a_source_with_no_frame_fails_setup_in_one_line(tmp_path):
    empty = tmp_path / "empty.mp4"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    writer.release()
    with pytest.raises(UserError) as info:
        CaptureStage(str(empty), FrameRingHandle("unused", None)).setup()
    assert str(empty) in str(info.value) and "\n" not in str(info.value)


def nvdec_capture(monkeypatch, frames: list, ring_format: str | None = None) -> tuple[object, list]:
    """A capture stage on NVDEC (PyNvVideoCodec stood in for by tests/stages/test_nvdec.FrameLibrary) keeping
    NV12; its SourceInfo and what reached the ring (its own format, or `ring_format`)."""
    from app.stages import nvdec
    from tests.stages.test_nvdec import FrameLibrary

    monkeypatch.setattr(nvdec, "import_nvc", lambda: FrameLibrary(frames))
    monkeypatch.setattr(nvdec, "nvdec_problem", lambda: None)
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), max_speed=True, decoder="nvdec",
                           nvdec_format="nv12")  # fmt: skip
    info = capture.setup()
    with ring_of(info.frame_shape, pixel_format=ring_format or info.pixel_format) as (ring, handle):
        capture.frames = handle
        got = read_all(capture, ring)
        capture.close()
    return info, got


def test_an_nvdec_capture_keeping_nv12_copies_the_planes_into_nv12_slots(monkeypatch):
    from tests.stages.test_nvdec import clip_frames, nv12

    frames = clip_frames(8)
    info, got = nvdec_capture(monkeypatch, frames)
    assert info.pixel_format == "nv12" and info.frame_shape == (360, 640, 3)  # the picture, not the planes
    assert [m.frame_index for m, _ in got] == list(range(8))
    assert all(m.width == 640 and m.height == 360 for m, _ in got)
    for (_, slot), frame in zip(got, frames, strict=True):
        assert slot.shape == (540, 640) and np.array_equal(slot, nv12(frame))


def test_nv12_frames_reaching_a_bgr_ring_are_converted_there(monkeypatch):
    from tests.stages.test_nvdec import clip_frames, nv12

    frames = clip_frames(4)
    _, got = nvdec_capture(monkeypatch, frames, ring_format="bgr")  # e.g. a camera back through NVDEC
    for (_, slot), frame in zip(got, frames, strict=True):
        assert np.array_equal(slot, cv2.cvtColor(nv12(frame), cv2.COLOR_YUV2BGR_NV12))


def test_an_ffmpeg_camera_stays_bgr_whatever_nvdec_would_keep():
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), max_frames=2, decoder="ffmpeg",
                           nvdec_format="nv12")  # fmt: skip
    info = capture.setup()
    capture.close()
    assert info.pixel_format == "bgr"


def test_a_placeholder_goes_into_an_nv12_ring_as_the_dimmed_last_frame():
    from app.pipeline.reconnect import RetrySchedule
    from app.vision.pixel_format import FramePixels, bgr_to_nv12, nv12_to_bgr

    frame = cv2.VideoCapture(str(HAMILTON)).read()[1]
    capture = CaptureStage("rtsp://127.0.0.1:9/none", FrameRingHandle("unused", None))
    capture.spec = parse_source("rtsp://127.0.0.1:9/none")
    capture._last_image = FramePixels(bgr_to_nv12(frame), "nv12")
    with ring_of(frame.shape, pixel_format="nv12") as (ring, handle):
        capture.frames = handle
        msg = capture._placeholder(RetrySchedule(capture.backoff))
        assert msg is not None and msg.meta.status.startswith("reconnecting to")
        shown = nv12_to_bgr(ring.frame(msg.meta.slot))
    dimmed = (nv12_to_bgr(bgr_to_nv12(frame)) * 0.35).astype(np.uint8)
    assert np.abs(shown.astype(int) - dimmed).mean() < 2.0  # dimmed, then through NV12 once more
