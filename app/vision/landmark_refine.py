"""Landmarks of small faces found again on an enlarged crop, for the embedder's alignment.

RetinaFace places the five landmarks of a 30-60 px face (at a 640 input, in a 720p frame) only to within a
few pixels, and the embedder's chip is warped from them: a 30 px face's chip from those landmarks scores
0.44 (median) against its person's photo where the same face's chip from landmarks found on the face
enlarged scores 0.49 (`testbench/eval_identification.py --probe-face-px`, dlib). So a face shorter than
`below_px` is cut out with `context` times its box around it, enlarged to `input_size` square, and detected
again there; the detection that matches its box gives the landmarks, mapped back to the frame. The frame's
own detections (boxes, scores, tracks) do not change: only the chip's alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.inference.interface import Model
from app.vision.alignment import region_source
from app.vision.pixel_format import BGR, FramePixels
from app.vision.retinaface import RetinaFacePostprocessor, letterbox

INPUT_SIZE = 192  # the crop's side: a face of `context` in it is ~96 px, where landmarks are well placed
CONTEXT = 2.0  # crop side / the box's long side: the detector sees the head and some background
SCORE_THRESHOLD = 0.3  # the face is known to be there: any plausible detection in the crop will do
# The crop's detection taken is the one of the face's size (its height within this factor of the box's)
# nearest the crop's centre, and it must be this face, not a neighbour: its centre within this share of the
# box's height of the crop's centre.
MAX_SHIFT = 0.35
MAX_SIZE_RATIO = 1.6
MIN_HEIGHT = 4.0  # a box shorter than this has no face to find again (and a crop of it would be empty)


@dataclass(frozen=True)
class RefineConfig:
    """Which faces are refined (`below_px`: box height in frame pixels; 0 = none) and how."""

    below_px: float
    input_size: int = INPUT_SIZE
    context: float = CONTEXT


class LandmarkRefiner:
    """Re-detects small faces on enlarged crops with a RetinaFace model (its own session: any input size)."""

    def __init__(self, detector: Model, config: RefineConfig, nms_threshold: float = 0.4) -> None:
        self.detector = detector
        self.config = config
        side = int(config.input_size)
        self._post = RetinaFacePostprocessor((side, side), SCORE_THRESHOLD, nms_threshold)
        self.refined = 0  # faces whose landmarks came from a crop
        self.missed = 0  # small faces the crop's detection did not find again (frame landmarks kept)

    def wants(self, boxes: np.ndarray) -> np.ndarray:
        """Boolean mask of the (N,4) boxes short enough to refine."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        heights = boxes[:, 3] - boxes[:, 1]
        return (heights < float(self.config.below_px)) & (heights >= MIN_HEIGHT) & (boxes[:, 2] > boxes[:, 0])

    def refine(self, frame: np.ndarray | FramePixels, boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N,5,2) float32 landmarks: the crop's for each small face found again there, else `landmarks`."""
        out = np.array(landmarks, np.float32).reshape(-1, 5, 2)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        rows = np.flatnonzero(self.wants(boxes))
        for i, face in zip(rows, self._find(frame, boxes, rows), strict=True):
            if face is None:
                self.missed += 1
            else:
                out[i] = face[2]
                self.refined += 1
        return out

    def find_again(
        self, frame: np.ndarray | FramePixels, boxes: np.ndarray
    ) -> list[tuple[np.ndarray, float, np.ndarray] | None]:
        """For each of the (N,4) `boxes`: the face of about that size and place found on an enlarged crop
        around it, (box, score, landmarks) in frame coordinates; None where there is none or the box is not
        short enough to refine (`wants`)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        rows = np.flatnonzero(self.wants(boxes))
        out: list[tuple[np.ndarray, float, np.ndarray] | None] = [None] * len(boxes)
        for i, face in zip(rows, self._find(frame, boxes, rows), strict=True):
            out[i] = face
        return out

    def _find(
        self, frame: np.ndarray | FramePixels, boxes: np.ndarray, rows: np.ndarray
    ) -> list[tuple[np.ndarray, float, np.ndarray] | None]:
        """For each of `boxes`' `rows`: the face found again on its crop, (box, score, landmarks) in frame
        coordinates, or None."""
        if rows.size == 0:
            return []
        side = int(self.config.input_size)
        batch = np.empty((rows.size, 3, side, side), np.float32)
        scales, offsets, expected = [], [], np.empty((rows.size, 4), np.float32)
        for j, i in enumerate(rows):
            crop, k, offset = self._crop(frame, boxes[i])
            letterbox(crop, side, out=batch[j])  # (the crop is the input's size: scale 1)
            scales.append(k)
            offsets.append(offset)
            expected[j] = boxes[i] * k + np.tile(offset, 2)
        outputs = self.detector.run(batch)
        found = self._post(outputs, [1.0] * rows.size, [(side, side)] * rows.size)
        out: list[tuple[np.ndarray, float, np.ndarray] | None] = []
        for j in range(rows.size):
            best = self._this_face(found[j].boxes, expected[j]) if len(found[j]) else None
            if best is None:
                out.append(None)
                continue
            offset = np.tile(offsets[j], 2)
            box = (found[j].boxes[best] - offset) / scales[j]
            out.append(
                (box, float(found[j].scores[best]), (found[j].landmarks[best] - offsets[j]) / scales[j])
            )
        return out

    @staticmethod
    def _this_face(boxes: np.ndarray, expected: np.ndarray) -> int | None:
        """The crop's detection that is the expected face (of its size, nearest the centre), or None."""
        height = float(expected[3] - expected[1])
        ratio = (boxes[:, 3] - boxes[:, 1]) / height
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        shift = np.hypot(*(centres - (expected[:2] + expected[2:]) / 2.0).T) / height
        shift[(ratio < 1.0 / MAX_SIZE_RATIO) | (ratio > MAX_SIZE_RATIO)] = np.inf
        best = int(np.argmin(shift))
        return best if shift[best] <= MAX_SHIFT else None

    def _crop(self, frame: np.ndarray | FramePixels, box: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """(crop (S,S,3) BGR, k, offset): crop coordinate = frame coordinate * k + offset, in the convention
        of the detector's own letterbox (cv2.resize by k: pixel centres at +0.5), so the crop's landmarks
        map back as the frame detector's do."""
        side = int(self.config.input_size)
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        span = self.config.context * max(box[2] - box[0], box[3] - box[1])
        k = side / span
        offset = np.array([side / 2.0 - k * cx, side / 2.0 - k * cy])
        # warpAffine maps pixel centres to pixel centres; resize by k maps x to (x + 0.5) * k - 0.5.
        shift = offset + 0.5 * (k - 1.0)
        matrix = np.array([[k, 0.0, shift[0]], [0.0, k, shift[1]]])
        if isinstance(frame, FramePixels) and frame.format != BGR:
            source, matrix = region_source(frame, matrix, (side, side))  # only the crop's window converted
        else:
            source = frame.bgr() if isinstance(frame, FramePixels) else frame
        crop = cv2.warpAffine(
            source, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return crop, k, offset
