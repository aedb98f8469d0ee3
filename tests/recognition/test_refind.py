"""Small tracked faces the frame's detector missed, found again on a crop where their track was."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import Settings
from app.recognition.analyzer import FaceAnalyzer, landmark_refiner
from app.recognition.refind import refind_missed, score_cap
from app.tracking.config import TrackerConfig
from app.tracking.matching import box_iou
from app.vision.image_io import read_image
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[2]
CAP = 0.39  # below the tracker's weak start (0.4)


def settings(**changes) -> Settings:
    base = Settings(
        detector_model=REPO / "checkpoints" / "retinaface_mnet025.onnx",
        embedder_model=REPO / "checkpoints" / "dlib_resnet.onnx",
        det_threshold=0.1,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def scene():
    """A 720p frame with one face drawn 40 px high, its box found on the frame, and the refiner."""
    analyzer = FaceAnalyzer(settings())
    photo = read_image(SHARED_FACES / "obama-720p.jpg")
    found = analyzer.detect_photo(photo)
    box = found.boxes[found.largest()]
    k = 40.0 / float(box[3] - box[1])
    small = cv2.resize(photo, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[300 : 300 + small.shape[0], 500 : 500 + small.shape[1]] = small[: 720 - 300, : 1280 - 500]
    truth = box * k + np.array([500, 300, 500, 300])
    refiner = landmark_refiner(settings(refine_below=80))
    assert refiner is not None
    return frame, truth, refiner


def empty():
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)


def test_a_missed_small_face_is_found_where_its_track_was_with_a_capped_score(scene):
    frame, truth, refiner = scene
    moved = truth + np.array([3, 2, 3, 2])  # its box on the last frame: a few pixels off
    boxes, scores, landmarks, added = refind_missed(refiner, frame, [moved], *empty(), CAP)
    assert added == 1 and boxes.shape == (1, 4) and landmarks.shape == (1, 5, 2)
    assert box_iou(boxes, truth[None])[0, 0] > 0.6
    assert 0.1 <= scores[0] <= CAP  # continues a track (second association), never starts one
    assert np.all((landmarks[0] >= boxes[0, :2] - 5) & (landmarks[0] <= boxes[0, 2:] + 5))


def test_a_covered_track_large_face_or_empty_spot_adds_nothing(scene):
    frame, truth, refiner = scene
    covered = (truth[None].astype(np.float32), np.array([0.9], np.float32), np.zeros((1, 5, 2), np.float32))
    assert refind_missed(refiner, frame, [truth], *covered, CAP)[3] == 0
    large = np.array([400, 200, 600, 400], np.float64)  # 200 px: not a small face
    assert refind_missed(refiner, frame, [large], *empty(), CAP)[3] == 0
    nothing = np.array([1000, 100, 1040, 140], np.float64)  # a flat grey patch
    assert refind_missed(refiner, frame, [nothing], *empty(), CAP)[3] == 0
    assert refind_missed(refiner, frame, [], *empty(), CAP)[3] == 0


def test_the_score_cap_stays_under_what_starts_a_track_and_over_what_is_associated():
    assert score_cap(TrackerConfig()) == pytest.approx(CAP)  # under the weak start (0.4)
    no_weak = TrackerConfig(weak_start_thresh=0.0)  # then under the new-track threshold (0.6 + 0.1)
    assert score_cap(no_weak) == pytest.approx(0.69)
    assert score_cap(TrackerConfig(weak_start_thresh=0.1)) > TrackerConfig().low_thresh
