"""Annotations on BGR frames: face boxes with track id, name and similarity; a text overlay (FPS, latency).

Colours say the state of a track's identity: green = named, orange = unknown (decided: nobody enrolled),
grey = pending (not enough evidence yet). Text scales with the frame height so it stays readable from
360p to 4K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

KNOWN_BGR = (60, 190, 60)
UNKNOWN_BGR = (40, 140, 255)
PENDING_BGR = (190, 190, 190)
TEXT_BGR = (255, 255, 255)
PANEL_BGR = (20, 20, 20)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def text_scale(image_height: int) -> tuple[float, int]:
    """(font scale, thickness) for a frame of this height."""
    scale = max(0.4, image_height / 720 * 0.6)
    return scale, max(1, round(scale * 1.6))


def face_label(track_id: int, name: str | None, status: str, similarity: float | None) -> str:
    """e.g. "#3 Lin-Manuel Miranda 0.62", "#4 unknown 0.21", "#5 ..." (pending)."""
    if status == "known" and name:
        text = f"#{track_id} {name}"
    elif status == "unknown":
        text = f"#{track_id} unknown"
    else:
        text = f"#{track_id} ..."
    if similarity is not None and not math.isnan(similarity) and status != "pending":
        text += f" {similarity:.2f}"
    return text


def colour_for(status: str) -> tuple[int, int, int]:
    return {"known": KNOWN_BGR, "unknown": UNKNOWN_BGR}.get(status, PENDING_BGR)


def draw_faces(
    image: np.ndarray,
    boxes: np.ndarray,
    track_ids: Sequence[int],
    names: Sequence[str | None],
    statuses: Sequence[str],
    similarities: Sequence[float],
) -> None:
    """Draw each face's box and label in place."""
    scale, thickness = text_scale(image.shape[0])
    height, width = image.shape[:2]
    for box, track_id, name, status, similarity in zip(
        boxes, track_ids, names, statuses, similarities, strict=True
    ):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = colour_for(status)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness + 1, cv2.LINE_AA)
        label = face_label(int(track_id), name, status, float(similarity))
        (tw, th), baseline = cv2.getTextSize(label, FONT, scale, thickness)
        # Above the box when there is room, else just inside its top edge.
        top = y1 - th - baseline - 4 if y1 - th - baseline - 4 >= 0 else y1
        left = min(max(x1, 0), max(width - tw - 4, 0))
        bottom = min(top + th + baseline + 4, height)
        cv2.rectangle(image, (left, top), (left + tw + 4, bottom), colour, cv2.FILLED)
        cv2.putText(
            image, label, (left + 2, bottom - baseline - 2), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA
        )


def draw_overlay(image: np.ndarray, lines: Sequence[str]) -> None:
    """Text lines on a dark panel in the top-left corner, in place."""
    if not lines:
        return
    scale, thickness = text_scale(image.shape[0])
    scale *= 0.85
    sizes = [cv2.getTextSize(line, FONT, scale, thickness) for line in lines]
    line_height = max(h + b for (_, h), b in sizes) + 6
    panel_w = max(w for (w, _), _ in sizes) + 12
    panel_h = line_height * len(lines) + 6
    h, w = image.shape[:2]
    region = image[: min(panel_h, h), : min(panel_w, w)]
    # Darken instead of paint over: the scene stays visible under the panel.
    region[:] = (region * 0.35 + np.array(PANEL_BGR) * 0.65).astype(np.uint8)
    for i, line in enumerate(lines):
        y = 3 + line_height * (i + 1) - 6
        cv2.putText(image, line, (6, y), FONT, scale, TEXT_BGR, thickness, cv2.LINE_AA)
