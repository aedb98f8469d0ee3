"""Small faces' landmarks found again on an enlarged crop: nearer the truth, the same on NV12, small only."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import Settings
from app.recognition.analyzer import FaceAnalyzer, landmark_refiner, refine_model_path
from app.vision.image_io import read_image
from app.vision.landmark_refine import LandmarkRefiner
from app.vision.pixel_format import NV12, FramePixels, bgr_to_nv12, nv12_to_bgr
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[2]
PHOTOS = sorted((SHARED_FACES / "knn_examples" / "train").glob("*/*.jp*g"))
FRAME_WH = (1280, 720)


def settings(**changes) -> Settings:
    base = Settings(
        detector_model=REPO / "checkpoints" / "retinaface_mnet025.onnx",
        embedder_model=REPO / "checkpoints" / "dlib_resnet.onnx",
        det_threshold=0.3,  # the tracker's low threshold: small faces are tracked from such detections
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(settings())


@pytest.fixture(scope="module")
def refiner() -> LandmarkRefiner:
    found = landmark_refiner(settings(refine_below=1000))
    assert found is not None
    return found


def drawn_small(analyzer: FaceAnalyzer, photo: Path, face_px: float, seed: int):
    """(frame, truth landmarks): the photo shrunk so its face is `face_px` high, at the centre of a textured
    720p frame; the truth is the landmarks found on the full-size photo, mapped the same way."""
    image = read_image(photo)
    found = analyzer.detect_photo(image)
    i = found.largest()
    assert i is not None, photo
    box, landmarks = found.boxes[i], found.landmarks[i]
    k = face_px / float(box[3] - box[1])
    small = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (FRAME_WH[1], FRAME_WH[0], 3), dtype=np.uint8), (0, 0), 4)
    ox = int(FRAME_WH[0] / 2 - k * (box[0] + box[2]) / 2)
    oy = int(FRAME_WH[1] / 2 - k * (box[1] + box[3]) / 2)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + small.shape[1], FRAME_WH[0]), min(oy + small.shape[0], FRAME_WH[1])
    frame[y0:y1, x0:x1] = small[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    # (in the detector's own convention: its letterbox resizes by a scale and maps points back by it alone)
    return frame, landmarks * k + np.array([ox, oy])


def centre_face(analyzer: FaceAnalyzer, frame: np.ndarray):
    """The frame detection nearest the frame's centre: (box (1,4), landmarks (1,5,2)), or None."""
    found = analyzer.detect(frame)
    if not len(found):
        return None
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    j = int(np.argmin(np.hypot(*(centres - np.array(FRAME_WH) / 2).T)))
    return found.boxes[j : j + 1], found.landmarks[j : j + 1]


def test_small_faces_landmarks_are_much_closer_to_the_truth(analyzer, refiner):
    frame_errors, refined_errors = [], []
    for seed, photo in enumerate(PHOTOS):
        for face_px in (40, 60):
            frame, truth = drawn_small(analyzer, photo, face_px, seed)
            face = centre_face(analyzer, frame)
            if face is None:
                continue  # (the frame detector misses some 40 px faces: nothing to refine)
            boxes, landmarks = face
            refined = refiner.refine(frame, boxes, landmarks)
            frame_errors.append(np.abs(landmarks[0] - truth).mean() / face_px)
            refined_errors.append(np.abs(refined[0] - truth).mean() / face_px)
    assert len(refined_errors) >= 12
    # Measured: 1.5-7 % of the face's height from the frame's detection, 0.6-1.8 % from the crop.
    assert np.mean(refined_errors) < 0.5 * np.mean(frame_errors)
    assert max(refined_errors) < 0.03


def test_nv12_frames_give_the_landmarks_of_their_bgr_pixels(analyzer, refiner):
    frame, _ = drawn_small(analyzer, PHOTOS[0], 50, seed=1)
    nv12 = bgr_to_nv12(frame)
    decoded = nv12_to_bgr(nv12)
    boxes, landmarks = centre_face(analyzer, decoded)
    from_bgr = refiner.refine(decoded, boxes, landmarks)
    from_nv12 = refiner.refine(FramePixels(nv12, NV12), boxes, landmarks)  # only the crop's window converted
    assert not np.allclose(from_bgr, landmarks, atol=0.5)  # refined at all
    # The same pixels; the warp from the window rounds its coordinates a hair differently (< 0.003 px).
    assert np.abs(from_nv12 - from_bgr).max() < 0.01


def test_only_faces_below_the_size_are_refined(analyzer):
    frame, _ = drawn_small(analyzer, PHOTOS[0], 50, seed=2)
    boxes, landmarks = centre_face(analyzer, frame)
    height = float(boxes[0, 3] - boxes[0, 1])
    tall = landmark_refiner(settings(refine_below=int(height)))  # the box is not shorter than this
    assert tall is not None and tall.refine(frame, boxes, landmarks).tolist() == landmarks.tolist()
    assert tall.refined == 0
    short = landmark_refiner(settings(refine_below=int(height) + 1))
    assert short is not None and short.refine(frame, boxes, landmarks).tolist() != landmarks.tolist()
    assert short.refined == 1
    assert landmark_refiner(settings(refine_below=0)) is None


def test_degenerate_boxes_keep_their_landmarks(refiner):
    frame = np.full((FRAME_WH[1], FRAME_WH[0], 3), 128, np.uint8)
    boxes = np.array([[600, 330, 630, 330], [600, 330, 600, 370], [-90, -90, -60, -50]], np.float32)
    landmarks = np.tile(np.array([[[608, 345]]], np.float32), (3, 5, 1))
    assert refiner.refine(frame, boxes, landmarks).tolist() == landmarks.tolist()  # off the frame: no face
    assert (
        refiner.refine(FramePixels(bgr_to_nv12(frame), NV12), boxes, landmarks).tolist() == landmarks.tolist()
    )
    assert refiner.refine(frame, boxes[:0], landmarks[:0]).shape == (0, 5, 2)


def test_a_refine_model_that_takes_no_square_crops_gives_no_refiner(tmp_path, caplog):
    engine = tmp_path / "retinaface.engine"
    engine.write_bytes(b"not read")
    with caplog.at_level("WARNING"):
        assert landmark_refiner(settings(refine_model=engine, refine_below=80)) is None
    assert "not an ONNX file" in caplog.text and "REFINE_BELOW=0" in caplog.text


def test_crops_are_refined_with_the_light_bundled_detector_whatever_the_frames_detector(tmp_path):
    # An engine (or a heavy R50) detecting the frames: the lane's CPU crops still use mnet0.25.
    engine = tmp_path / "retinaface.engine"
    engine.write_bytes(b"not read")
    bundled = REPO / "checkpoints" / "retinaface_mnet025.onnx"
    assert refine_model_path(settings(detector_model=engine)).resolve() == bundled.resolve()
    assert landmark_refiner(settings(detector_model=engine, refine_below=80)) is not None
    chosen = tmp_path / "mine.onnx"
    assert refine_model_path(settings(detector_model=engine, refine_model=chosen)) == chosen


def test_a_face_not_found_again_keeps_its_landmarks(refiner):
    blank = np.full((FRAME_WH[1], FRAME_WH[0], 3), 128, np.uint8)
    boxes = np.array([[600, 330, 630, 370]], np.float32)
    landmarks = np.tile(np.array([[[608, 345]]], np.float32), (1, 5, 1))
    missed = refiner.missed
    assert refiner.refine(blank, boxes, landmarks).tolist() == landmarks.tolist()
    assert refiner.missed == missed + 1


def test_the_analyzer_refines_video_faces_given_their_boxes(analyzer):
    frame, truth = drawn_small(analyzer, PHOTOS[0], 40, seed=3)
    boxes, landmarks = centre_face(analyzer, frame)
    refining = FaceAnalyzer(settings(refine_below=64))
    plain = FaceAnalyzer(settings(refine_below=0))
    assert np.array_equal(refining.embed(frame, landmarks), plain.embed(frame, landmarks))  # no boxes: photos
    refined = refining.embed(frame, landmarks, boxes)
    assert not np.array_equal(refined, plain.embed(frame, landmarks, boxes))
    assert refining.refiner is not None and refining.refiner.refined == 1
