"""A small self-contained face chip maker for the models tests.

Deliberately independent of app/vision (another engineer's module) so these tests check the converted embedder
on its own: RetinaFace mnet0.25 detection with biubug6-style decoding, then a similarity warp of the 5
landmarks onto dlib's 150x150 chip points.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

# dlib's 150x150 chip: left eye, right eye, nose, left and right mouth corner (image left/right).
DLIB_CHIP_POINTS = np.array(
    [[46.21, 44.95], [100.50, 44.61], [72.88, 76.97], [49.71, 99.16], [98.56, 98.98]], dtype=np.float32
)
DLIB_MEAN_RGB = np.array([122.782, 117.001, 104.298], dtype=np.float32)
_DETECTOR_SIZE = 640
_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
_STEPS = (8, 16, 32)
_VARIANCE = (0.1, 0.2)


def _priors(size: int) -> np.ndarray:
    rows = []
    for step, min_sizes in zip(_STEPS, _MIN_SIZES, strict=True):
        cells = int(np.ceil(size / step))
        for i, j, min_size in product(range(cells), range(cells), min_sizes):
            rows.append([(j + 0.5) * step / size, (i + 0.5) * step / size, min_size / size, min_size / size])
    return np.array(rows, dtype=np.float32)


class FaceChipMaker:
    """Detects faces and warps each to a dlib-style 150x150 RGB chip."""

    def __init__(self, detector: Path) -> None:
        self.session = ort.InferenceSession(str(detector), providers=["CPUExecutionProvider"])
        self.priors = _priors(_DETECTOR_SIZE)

    def landmarks(self, image_bgr: np.ndarray, threshold: float = 0.8) -> np.ndarray:
        """(N, 5, 2) landmarks in source pixels, best face first, after a crude NMS."""
        scale = _DETECTOR_SIZE / max(image_bgr.shape[:2])
        resized = cv2.resize(image_bgr, None, fx=scale, fy=scale)
        canvas = np.zeros((_DETECTOR_SIZE, _DETECTOR_SIZE, 3), dtype=np.float32)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        blob = (canvas - np.array([104, 117, 123], dtype=np.float32)).transpose(2, 0, 1)[None]
        loc, conf, landms = self.session.run(None, {"input": blob})
        scores = conf[0, :, 1]
        keep = scores > threshold
        p = self.priors[keep]
        centers = p[:, :2] + loc[0, keep, :2] * _VARIANCE[0] * p[:, 2:]
        sizes = p[:, 2:] * np.exp(loc[0, keep, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) * _DETECTOR_SIZE / scale
        points = p[:, None, :2] + landms[0, keep].reshape(-1, 5, 2) * _VARIANCE[0] * p[:, None, 2:]
        points = points * _DETECTOR_SIZE / scale
        order = np.argsort(-scores[keep])
        chosen: list[int] = []
        for index in order:
            if all(_iou(boxes[index], boxes[other]) < 0.4 for other in chosen):
                chosen.append(int(index))
        return points[chosen]

    def chips(self, image_bgr: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) RGB uint8 chips, best face first."""
        result = []
        for points in self.landmarks(image_bgr):
            matrix, _ = cv2.estimateAffinePartial2D(points, DLIB_CHIP_POINTS, method=cv2.LMEDS)
            chip = cv2.warpAffine(image_bgr, matrix, (150, 150), flags=cv2.INTER_LINEAR)
            result.append(cv2.cvtColor(chip, cv2.COLOR_BGR2RGB))
        return np.array(result, dtype=np.uint8).reshape(-1, 150, 150, 3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def normalise_chips(chips_rgb: np.ndarray) -> np.ndarray:
    """The dlib embedder's input: (x - mean) / 256, NCHW float32."""
    return ((chips_rgb.astype(np.float32) - DLIB_MEAN_RGB) / 256.0).transpose(0, 3, 1, 2).copy()
