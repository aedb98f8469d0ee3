"""Live latency: a paced file can play as a live camera, the detector input fits the frames, and a live
camera's stale frames are dropped before they cost a detection."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.messages import SourceInfo, StageStamp
from app.pipeline.stage_runner import NOTHING_YET
from app.stages.capture import CaptureStage
from app.stages.detect import STALE_AFTER_S, DetectStage
from app.stages.postprocess import PostprocessStage
from app.vision.retinaface import fitted_input_hw
from tests.stages.stage_chain import put_frame, read_all, ring_of, sources
from tests.support.shared_data import HAMILTON, REPO

DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"


def test_a_paced_file_played_live_is_live_and_still_ends_at_its_last_frame():
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), fps_target=2000, live_file=True)
    info = capture.setup()
    assert info.live is True
    with ring_of(info.frame_shape) as (ring, handle):
        capture.frames = handle
        frames = len(read_all(capture, ring))
        capture.close()
    assert capture.end_reason == "end of stream" and capture.reconnects == 0
    assert frames == info.frame_count == 275


def test_a_file_played_live_overwrites_stale_frames_instead_of_waiting():
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), fps_target=2000, live_file=True)
    info = capture.setup()
    with ring_of(info.frame_shape, slots=3) as (ring, handle):
        capture.frames = handle
        published = []
        while len(published) < 8:  # nobody consumes: a file would wait for a free slot from the 4th on
            msg = capture.produce()
            if msg is not None and msg is not NOTHING_YET:
                published.append(msg)
        assert ring.dropped == 5
        assert [m for m in published if ring.claim(m.meta.slot, m.meta.seq)] == published[-3:]
        capture.close()


def test_a_file_read_at_full_speed_stays_a_file():
    capture = CaptureStage(str(HAMILTON), FrameRingHandle("unused", None), max_speed=True, live_file=True)
    assert capture.setup().live is False
    capture.close()


@pytest.mark.parametrize(
    ("frames", "det_size", "expected"),
    [
        ([(720, 1280)], 640, (384, 640)),  # 16:9: 360 rows of picture, rounded up to the stride
        ([(1080, 1920)], 640, (384, 640)),
        ([(1280, 720)], 640, (640, 384)),  # portrait
        ([(720, 1280), (480, 640)], 640, (480, 640)),  # one input holds every camera
        ([(640, 640)], 640, (640, 640)),
        ([(720, 1280)], 500, (500, 500)),  # not a multiple of the stride: the square, as before
    ],
)
def test_the_detector_input_is_the_smallest_that_holds_every_frame(frames, det_size, expected):
    assert fitted_input_hw(frames, det_size) == expected


def _faces(stage: DetectStage, msgs) -> list[np.ndarray]:
    post = PostprocessStage(0.5, 0.4)
    post.setup()
    return [post.process(raw)[0].boxes for raw in stage.process_batch(msgs)]


def test_a_fitted_input_finds_the_faces_the_square_input_finds():
    cap = cv2.VideoCapture(str(HAMILTON))
    images = []
    for index in range(241):
        ok, frame = cap.read()
        assert ok
        if index in (0, 90, 240):
            images.append(cv2.resize(frame, (1280, 720)))
    cap.release()
    with ring_of(images[0].shape, slots=4) as (ring, handle):
        square = DetectStage(handle, DETECTOR)
        fitted = DetectStage(handle, DETECTOR)
        assert square.setup()["input_hw"] == (640, 640)
        fitted.setup()
        fitted.start(sources(25.0, images[0].shape))
        assert fitted.input_hw == (384, 640)
        for i, image in enumerate(images):
            msg = put_frame(ring, image, 2 * i)
            want = _faces(square, [msg])[0]
            ring.release(msg.meta.slot, msg.meta.seq)
            msg = put_frame(ring, image, 2 * i + 1)
            got = _faces(fitted, [msg])[0]
            ring.release(msg.meta.slot, msg.meta.seq)
            assert len(want) and got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=2.0)
        square.close()
        fitted.close()


def live_detector(handle, clock) -> DetectStage:
    """A started detector serving one live 640x360 camera, on `clock`."""
    stage = DetectStage(handle, DETECTOR, clock=clock)
    stage.setup()
    stage.start({0: SourceInfo((360, 640, 3), 25.0, True, "live test")})
    return stage


def test_a_live_cameras_older_frames_in_a_batch_are_dropped_before_detection():
    image = np.full((360, 640, 3), 90, np.uint8)
    with ring_of(image.shape, slots=4) as (ring, handle):
        now = [0.0]
        stage = live_detector(handle, lambda: now[0])
        msgs = [put_frame(ring, image, i) for i in range(3)]
        now[0] = msgs[0].meta.stamps[0].end + STALE_AFTER_S + 0.01  # every queued frame older than the bound
        out = stage.process_batch(msgs)
        assert [raw.meta.seq for raw in out] == [3]
        assert ring.dropped == 2 and ring.states().count("free") == 3
        stage.close()


def test_a_live_camera_a_frame_behind_for_a_moment_loses_nothing():
    """Newer frames in the batch, but none read longer than STALE_AFTER_S ago (a slow first batch after the
    start): all are detected, nothing is counted as dropped."""
    image = np.full((360, 640, 3), 90, np.uint8)
    with ring_of(image.shape, slots=4) as (ring, handle):
        now = [0.0]
        stage = live_detector(handle, lambda: now[0])
        msgs = [put_frame(ring, image, i) for i in range(3)]
        msgs[0].meta.stamps[0] = StageStamp("capture", 0.0, 1.0)
        msgs[1].meta.stamps[0] = StageStamp("capture", 0.0, 1.04)
        msgs[2].meta.stamps[0] = StageStamp("capture", 0.0, 1.08)
        now[0] = 1.0 + STALE_AFTER_S - 0.01
        out = stage.process_batch(msgs)
        assert [raw.meta.seq for raw in out] == [1, 2, 3]
        assert ring.dropped == 0
        for raw in out:  # the sink's release: slots free for the next frames
            ring.release(raw.meta.slot, raw.meta.seq)
        msgs = [put_frame(ring, image, i) for i in range(3, 5)]
        msgs[0].meta.stamps[0] = StageStamp("capture", 0.0, 2.0)
        msgs[1].meta.stamps[0] = StageStamp("capture", 0.0, 2.2)
        now[0] = 2.0 + STALE_AFTER_S + 0.01  # now the older one is past the bound: newest wins
        assert [raw.meta.seq for raw in stage.process_batch(msgs)] == [5]
        assert ring.dropped == 1
        stage.close()


def test_a_files_frames_in_a_batch_are_all_detected():
    image = np.full((360, 640, 3), 90, np.uint8)
    with ring_of(image.shape, slots=4) as (ring, handle):
        stage = DetectStage(handle, DETECTOR)
        stage.setup()
        stage.start(sources(25.0, image.shape, live=False))
        msgs = [put_frame(ring, image, i) for i in range(3)]
        out = stage.process_batch(msgs)
        assert [raw.meta.seq for raw in out] == [1, 2, 3]
        assert ring.dropped == 0
        for raw in out:  # the sink's release: slots free for the next frames
            ring.release(raw.meta.slot, raw.meta.seq)
        stage.close()
