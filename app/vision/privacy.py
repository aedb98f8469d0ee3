"""Privacy: hide the faces of people who are not known before a frame is shown or written."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

BLUR_CELLS = 8  # the face is averaged down to about 8x8 blocks: no identity survives, the shape does
MARGIN = 0.15  # grow the box by this fraction of its size per side: hair and chin identify people too


def blur_faces(image: np.ndarray, boxes: np.ndarray, statuses: Sequence[str]) -> int:
    """Pixelate, in place, every face whose status is not "known"; returns how many were hidden."""
    height, width = image.shape[:2]
    hidden = 0
    for box, status in zip(np.asarray(boxes, np.float64).reshape(-1, 4), statuses, strict=True):
        if status == "known":
            continue
        x1, y1, x2, y2 = box
        mx, my = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
        left, top = max(int(x1 - mx), 0), max(int(y1 - my), 0)
        right, bottom = min(int(np.ceil(x2 + mx)), width), min(int(np.ceil(y2 + my)), height)
        if right - left < 2 or bottom - top < 2:
            continue
        region = image[top:bottom, left:right]
        cells = (max(1, min(BLUR_CELLS, right - left)), max(1, min(BLUR_CELLS, bottom - top)))
        small = cv2.resize(region, cells, interpolation=cv2.INTER_AREA)
        region[:] = cv2.resize(small, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
        hidden += 1
    return hidden
