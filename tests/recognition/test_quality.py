import cv2
import numpy as np

from app.config import load_settings
from app.recognition import quality
from app.recognition.analyzer import FaceAnalyzer
from app.vision.image_io import read_image
from tests.support.shared_data import SHARED_FACES


def _face(path):
    image = read_image(path)
    analyzer = FaceAnalyzer(load_settings({}, env_file=None))
    detections = analyzer.detect(image)
    i = detections.largest()
    return image, detections.boxes[i], detections.landmarks[i], float(detections.scores[i])


def frontal(box):
    x1, y1, x2, y2 = box
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])
    return (np.array([x1, y1]) + rel * np.array([x2 - x1, y2 - y1])).astype(np.float32)


def test_a_sharp_large_frontal_photo_is_fit_and_scores_high():
    image, box, landmarks, score = _face(SHARED_FACES / "obama-720p.jpg")
    terms = quality.face_quality(image, box[None], landmarks[None], np.array([score]))
    assert terms.size[0] == 1.0 and terms.frontal[0] > 0.7 and terms.sharpness[0] > 0.5
    assert terms.quality[0] > 0.75
    assert quality.Refusal().reasons(box, landmarks, float(terms.sharpness[0])) == []


def test_a_blurred_photo_is_refused_as_too_blurred():
    image, box, landmarks, _ = _face(SHARED_FACES / "obama-720p.jpg")
    height = box[3] - box[1]
    blurred = cv2.GaussianBlur(image, (0, 0), height / 25)
    sharp = quality.sharpness_term(blurred, box, quality.QualityConfig().reference_sharpness)
    reasons = quality.Refusal().reasons(box, landmarks, sharp)
    assert len(reasons) == 1 and reasons[0].startswith("too blurred")


def test_small_and_turned_faces_are_refused_with_their_reasons():
    box = np.array([10.0, 10.0, 40.0, 50.0])
    turned = frontal(box)
    turned[2, 0] = turned[0, 0]  # nose over the left eye: a profile
    reasons = quality.Refusal().reasons(box, turned, 1.0)
    assert [r.split(" ")[0] for r in reasons] == ["face", "turned"]
    assert "40 px high" in reasons[0]


def test_quality_falls_with_size_yaw_and_detector_score():
    box = np.array([[0.0, 0.0, 80.0, 100.0]])
    base = quality.combine(
        quality.size_term(box, 96.0), quality.frontal_term(frontal(box[0])[None]), 1.0, 1.0
    )
    small = quality.combine(quality.size_term(box / 2, 96.0), 1.0, 1.0, 1.0)
    doubtful = quality.combine(1.0, 1.0, 1.0, quality.detector_term(np.array([0.6]), 0.5))
    assert small[0] < base[0] and doubtful[0] < 1.0
    yawed = frontal(box[0])
    yawed[2, 0] += 0.2 * 80
    assert quality.frontal_term(yawed[None])[0] < quality.frontal_term(frontal(box[0])[None])[0]
