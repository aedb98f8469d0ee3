"""Finds the face of a sprite photo (and, for tests, the faces of rendered frames) with RetinaFace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.errors import UserError
from app.inference.backend import load_model
from app.models.paths import DEFAULT_DETECTOR
from app.vision.retinaface import Detections, decode_retinaface, detector_input_hw, letterbox, split_outputs


@dataclass(frozen=True)
class FaceLocation:
    box: np.ndarray  # (4,) float32 x1,y1,x2,y2 in image pixels
    landmarks: np.ndarray  # (5,2) float32, RetinaFace order


class FaceLocator(Protocol):
    def locate(self, image_bgr: np.ndarray, source: str = "image") -> FaceLocation:
        """The main face of a photo; UserError naming `source` when there is none."""
        ...


class RetinaFaceLocator:
    """RetinaFace on one image at a time (letterboxed to `det_size`), decoded by `app.vision.retinaface`."""

    def __init__(
        self,
        model_path: Path = DEFAULT_DETECTOR,
        det_size: int = 640,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.4,
        threads: int = 0,
    ) -> None:
        self.model = load_model(Path(model_path), threads=threads)
        self.input_hw = detector_input_hw(self.model, det_size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def detect(self, image_bgr: np.ndarray) -> Detections:
        blob, scale = letterbox(image_bgr, self.input_hw)
        loc, conf, landms = split_outputs(self.model.run(blob[None]))
        h, w = image_bgr.shape[:2]
        return decode_retinaface(
            loc[0], conf[0], landms[0], scale, self.input_hw, self.score_threshold, self.nms_threshold, (w, h)
        )

    def locate(self, image_bgr: np.ndarray, source: str = "image") -> FaceLocation:
        """The largest face: sprite photos are portraits, where bystanders are smaller."""
        dets = self.detect(image_bgr)
        best = dets.largest()
        if best is None:
            raise UserError(f"no face found in {source}; use a photo with one clear, frontal face")
        return FaceLocation(dets.boxes[best].copy(), dets.landmarks[best].copy())
