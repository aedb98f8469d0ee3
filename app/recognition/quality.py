"""Face quality: how much one detected face can be trusted for recognition (the one home of this concept).

Four terms, each in 0..1, from what the detector already gives (box, 5 landmarks, score) plus the pixels:

- size: box height / `reference_size` (dlib's chip is 150 px; faces much smaller than ~100 px lose detail),
- frontal: from the nose offset across the eye-mouth midline in eye distances (~0 frontal, ~0.5 at a half
  profile): 1 - offset / 0.5,
- sharpness: Laplacian variance of the face resized to a 64 px grey crop (one scale, so big and small faces
  compare) / `reference_sharpness`,
- detector: the detector score mapped from `detector_floor` (0) to 1.

`quality` = size x (0.3 + 0.7 frontal) x (0.3 + 0.7 sharpness) x detector-weight: a small or turned face
still counts a little, so a track of only such views can be named, slowly. The pipeline's identity policy
weighs embeddings with it; enrolment refuses photos whose terms are below `Refusal` limits, with the reason.
Pure functions over numpy arrays; nothing here knows about tracks or galleries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from app.vision.pixel_format import FramePixels

# A frame's pixels: a BGR array, or a ring frame in any pixel format (only face regions are converted).
Frame = np.ndarray | FramePixels

SHARPNESS_CROP = 64  # px; the blur measure is taken at one scale so big and small faces compare
HALF_PROFILE_OFFSET = 0.5  # nose offset (eye distances) where the frontal term reaches 0


@dataclass(frozen=True)
class QualityConfig:
    reference_size: float = 96.0  # px face height where the size term saturates
    # Laplacian variance of a 64 px grey crop where sharpness saturates (RetinaFace crops of sharp face
    # photos measure 500-1700; blurred by sigma = face height / 50, 30-90).
    reference_sharpness: float = 400.0
    detector_floor: float = 0.5  # detector score that weighs 0 (RetinaFace's real faces score > 0.9)


@dataclass(frozen=True)
class FaceQuality:
    """Per-face terms, each (N,) in 0..1, and their product `quality`."""

    size: np.ndarray
    frontal: np.ndarray
    sharpness: np.ndarray
    detector: np.ndarray

    @property
    def quality(self) -> np.ndarray:
        return combine(self.size, self.frontal, self.sharpness, self.detector)


def combine(size, frontal, sharpness, detector) -> np.ndarray:
    """The quality product of the terms (arrays or floats, each in 0..1)."""
    size, frontal = np.asarray(size, np.float64), np.asarray(frontal, np.float64)
    sharp, det = np.asarray(sharpness, np.float64), np.asarray(detector, np.float64)
    return size * frontal_weight(frontal) * sharpness_weight(sharp) * detector_weight(det)


# What each term (array or float) weighs in the product: a turned, blurred or doubtful face counts a little.
def frontal_weight(frontal: Any) -> Any:
    return 0.3 + 0.7 * frontal


def sharpness_weight(sharpness: Any) -> Any:
    return 0.3 + 0.7 * sharpness


def detector_weight(detector: Any) -> Any:
    return 0.5 + 0.5 * detector


def _unit(values: np.ndarray) -> np.ndarray:
    """np.clip(values, 0, 1), value for value (NaN stays NaN, -0 becomes 0), without np.clip's Python-level
    dispatch: the identity policy takes these terms for every face of every frame."""
    return np.minimum(1.0, np.maximum(0.0, values))


def size_term(boxes: np.ndarray, reference_size: float) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return _unit((boxes[:, 3] - boxes[:, 1]) / reference_size)


def yaw_offset(landmarks: np.ndarray) -> np.ndarray:
    """Nose offset across the face in eye distances, (N,5,2) -> (N,): ~0 frontal, ~0.5 half profile."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    left_eye, right_eye, nose, left_mouth, right_mouth = (points[:, i] for i in range(5))
    axis = right_eye - left_eye
    # sqrt of the sum of squares is what np.linalg.norm(axis=1) computes for real rows, without its checks.
    eye_distance = np.maximum(np.sqrt(np.add.reduce(axis * axis, axis=1)), 1e-6)
    midline = (left_eye + right_eye + left_mouth + right_mouth) / 4
    return np.abs(np.add.reduce((nose - midline) * axis, axis=1)) / eye_distance**2


def frontal_term(landmarks: np.ndarray) -> np.ndarray:
    return _unit(1.0 - yaw_offset(landmarks) / HALF_PROFILE_OFFSET)


def detector_term(scores: np.ndarray, floor: float) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return _unit((scores - floor) / max(1.0 - floor, 1e-6))


def geometric(boxes: np.ndarray, landmarks: np.ndarray, reference_size: float) -> np.ndarray:
    """Size x frontal part of the quality, without pixels or scores -> (N,) in 0..1."""
    return size_term(boxes, reference_size) * frontal_weight(frontal_term(landmarks))


def inside_fraction(boxes: np.ndarray, frame_hw: tuple[int, ...]) -> np.ndarray:
    """Fraction of each (N, 4) box's area inside a frame of (height, width): a cut face embeds poorly."""
    height, width = frame_hw[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6) * np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    # np.maximum(x, 0) is np.clip(x, 0, None) value for value, -0 included (the operand order matters).
    inner_w = np.maximum(np.minimum(boxes[:, 2], width) - np.maximum(boxes[:, 0], 0.0), 0.0)
    inner_h = np.maximum(np.minimum(boxes[:, 3], height) - np.maximum(boxes[:, 1], 0.0), 0.0)
    fraction: np.ndarray = _unit(inner_w * inner_h / area)
    return fraction


def sharpness_term(frame_bgr: Frame, box: np.ndarray, reference_sharpness: float) -> float:
    """Laplacian variance of the face crop resized to 64 px grey, in 0..1 (0 for a box off the frame)."""
    height, width = frame_bgr.shape[:2]
    x1, y1, x2, y2 = np.round(np.asarray(box, dtype=np.float64)).astype(int)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    # An NV12 ring frame converts this crop only.
    pixels = frame_bgr if isinstance(frame_bgr, FramePixels) else FramePixels(frame_bgr)
    crop = pixels.region(x1, y1, x2, y2)
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    grey = cv2.resize(grey, (SHARPNESS_CROP, SHARPNESS_CROP), interpolation=cv2.INTER_AREA)
    variance = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return min(max(variance / reference_sharpness, 0.0), 1.0)  # (a variance: never NaN, never -0)


def face_quality(
    frame_bgr: Frame | None,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    scores: np.ndarray | None = None,
    config: QualityConfig | None = None,
) -> FaceQuality:
    """All terms for N faces of one frame (sharpness 1 without a frame, detector 1 without scores)."""
    cfg = config or QualityConfig()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = boxes.shape[0]
    sharp = (
        np.ones(n)
        if frame_bgr is None
        else np.array([sharpness_term(frame_bgr, b, cfg.reference_sharpness) for b in boxes])
    )
    det = np.ones(n) if scores is None else detector_term(scores, cfg.detector_floor)
    return FaceQuality(size_term(boxes, cfg.reference_size), frontal_term(landmarks), sharp, det)


@dataclass(frozen=True)
class Refusal:
    """Limits below which a photo is not fit for enrolment (the gallery keeps what it is given)."""

    min_face_size: float = 60.0  # px face height: smaller chips are upscaled blur
    min_sharpness: float = 0.06  # sharpness term (Laplacian variance 24 of the 64 px crop at the default)
    max_yaw_offset: float = 0.45  # nose offset in eye distances (0.5 = half profile)

    def reasons(self, box: np.ndarray, landmarks: np.ndarray, sharpness: float) -> list[str]:
        """Why this face is unusable for enrolment (empty when it is fine)."""
        found = []
        height = float(np.asarray(box, np.float64)[3] - np.asarray(box, np.float64)[1])
        if height < self.min_face_size:
            found.append(f"face too small ({height:.0f} px high, need {self.min_face_size:.0f})")
        if sharpness < self.min_sharpness:
            found.append(f"too blurred (sharpness {sharpness:.2f}, need {self.min_sharpness:.2f})")
        yaw = float(yaw_offset(np.asarray(landmarks)[None])[0])
        if yaw > self.max_yaw_offset:
            found.append(f"turned away (profile offset {yaw:.2f}, at most {self.max_yaw_offset:.2f})")
        return found
