"""Detection (model only) and post-processing (decode + NMS) stages: the real RetinaFace on real frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import load_settings
from app.errors import UserError
from app.pipeline.messages import FaceDetections
from app.recognition.analyzer import FaceAnalyzer
from app.stages.detect import CandidateDetections, DetectStage
from app.stages.postprocess import PostprocessStage
from tests.stages.stage_chain import put_frame, ring_of
from tests.support.shared_data import HAMILTON, REPO

DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """Frames 0 (two small faces), 90 (one large face), 240 (an audience) of the Hamilton clip."""
    cap = cv2.VideoCapture(str(HAMILTON))
    frames, index = [], 0
    while len(frames) < 3:
        ok, frame = cap.read()
        assert ok
        if index in (0, 90, 240):
            frames.append(frame)
        index += 1
    cap.release()
    return frames


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(load_settings({"det_threshold": 0.6}, env_file=None))


def test_batched_detection_matches_the_single_process_analyzer(clip_frames, analyzer):
    with ring_of(clip_frames[0].shape) as (ring, handle):
        detect = DetectStage(handle, DETECTOR, max_batch=4)
        post = PostprocessStage(score_threshold=0.6, nms_threshold=0.4)
        assert detect.setup()["input_hw"] == (640, 640)
        post.setup()
        refs = [put_frame(ring, frame, i) for i, frame in enumerate(clip_frames)]
        raw = detect.process_batch(refs)  # one model call for the three frames
        assert [r.meta.frame_index for r in raw] == [0, 1, 2]
        # Only the candidate priors of the 16800 travel to post-processing.
        assert all(isinstance(r, CandidateDetections) and r.priors == 16800 for r in raw)
        assert all(0 < len(r.prior_index) < 2000 and r.loc.shape == (len(r.prior_index), 4) for r in raw)
        assert all(state == "claimed" for state in ring.states()[:3])
        found = [post.process(r)[0] for r in raw]
        expected = analyzer.detect_batch(clip_frames)
        assert [len(f.scores) for f in found] == [len(e) for e in expected]
        assert [len(e) for e in expected][:2] == [2, 1] and len(expected[2]) >= 4
        for got, want in zip(found, expected, strict=True):
            assert isinstance(got, FaceDetections)
            np.testing.assert_allclose(got.boxes, want.boxes, atol=0.5)
            np.testing.assert_allclose(got.landmarks, want.landmarks, atol=0.5)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)
        # Boxes are in source pixels of the 640x360 frame.
        assert found[1].boxes[0, 3] - found[1].boxes[0, 1] > 80 and found[1].boxes[:, 2].max() <= 640
        detect.close()


def test_a_dropped_frame_is_skipped_without_running_the_model(clip_frames):
    with ring_of(clip_frames[0].shape) as (ring, handle):
        detect = DetectStage(handle, DETECTOR)
        detect.setup()
        kept, dropped = put_frame(ring, clip_frames[1], 0), put_frame(ring, clip_frames[2], 1)
        ring.drop(dropped.meta.slot, dropped.meta.seq)  # e.g. overwritten by a newer live frame
        out = detect.process_batch([kept, dropped])
        assert [r.meta.frame_index for r in out] == [0]
        assert detect.process(dropped) == []
        detect.close()


def test_low_score_floor_keeps_weak_faces_for_the_tracker(clip_frames):
    with ring_of(clip_frames[0].shape) as (ring, handle):
        detect = DetectStage(handle, DETECTOR)
        detect.setup()
        raw = detect.process(put_frame(ring, clip_frames[2], 0))[0]
        strict = PostprocessStage(0.6, 0.4)
        loose = PostprocessStage(0.1, 0.4)
        strict.setup()
        loose.setup()
        n_strict, n_loose = len(strict.process(raw)[0].scores), len(loose.process(raw)[0].scores)
        assert n_loose > n_strict
        assert (loose.process(raw)[0].scores > 0.1).all()
        detect.close()


def test_missing_or_wrong_detector_model_is_a_one_line_user_error(tmp_path):
    with ring_of((8, 8, 3)) as (_, handle):
        with pytest.raises(UserError, match="does not exist"):
            DetectStage(handle, tmp_path / "missing.onnx").setup()
        with pytest.raises(UserError, match="is not a RetinaFace detector"):
            DetectStage(handle, EMBEDDER).setup()
        bogus = tmp_path / "bogus.onnx"
        bogus.write_bytes(b"not a model")
        with pytest.raises(UserError) as info:
            DetectStage(handle, Path(bogus)).setup()
        assert "\n" not in str(info.value)


def test_each_camera_gets_its_own_score_threshold_and_minimum_face(clip_frames):
    import copy

    with ring_of(clip_frames[0].shape) as (ring, handle):
        detect = DetectStage(handle, DETECTOR)
        detect.setup()
        raw = detect.process(put_frame(ring, clip_frames[2], 0))[0]
        detect.close()
    post = PostprocessStage(0.1, 0.4, score_thresholds={1: 0.6}, min_faces={2: 40})
    post.setup()
    by_stream = []
    for stream in (0, 1, 2):
        msg = copy.deepcopy(raw)
        msg.meta.stream = stream
        by_stream.append(post.process(msg)[0])
    loose, strict, big = by_stream
    assert len(strict.scores) < len(loose.scores) and (strict.scores > 0.6).all()  # camera 1's DET_THRESHOLD
    sides = np.minimum(big.boxes[:, 2] - big.boxes[:, 0], big.boxes[:, 3] - big.boxes[:, 1])
    assert 0 < len(big.scores) < len(loose.scores) and (sides >= 40).all()  # camera 2's MIN_FACE
