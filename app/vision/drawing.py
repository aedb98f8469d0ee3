"""Annotations on BGR frames: face boxes with track id, name and similarity; a text overlay (FPS, latency);
a legend of the colours and keys; note text that fits a region.

Colours say the state of a track's identity: green = named, orange = unknown (decided: nobody enrolled),
grey = pending (not enough evidence yet). Text scales with the frame size so it stays readable from
360p to 4K. `annotate_frame` draws the stats panel first and the faces over it, so a panel never hides a
face's label.
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
NOTE_BGR = (80, 200, 255)  # amber: a camera's state ("reconnecting", an error), not a face
PANEL_BGR = (20, 20, 20)
FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND = (("known", KNOWN_BGR), ("unknown", UNKNOWN_BGR), ("pending", PENDING_BGR))


def text_scale(image_height: int, image_width: int | None = None) -> tuple[float, int]:
    """(font scale, thickness) for a frame of this height (and width: a narrow frame gets smaller text)."""
    basis = image_height / 720
    if image_width is not None:
        basis = min(basis, image_width / 1280)
    scale = max(0.4, basis * 0.6)
    return scale, max(1, round(scale * 1.6))


def shade(region: np.ndarray, keep: float = 0.35) -> None:
    """Darken `region` in place towards PANEL_BGR, keeping `keep` of the picture: text on it reads."""
    if region.size == 0:
        return
    panel = tuple(c * (1.0 - keep) for c in PANEL_BGR)
    # A 4-tuple is a per-channel cv::Scalar: two saturating uint8 passes, no float copy of the region.
    region[:] = cv2.add(cv2.convertScaleAbs(region, alpha=keep), (*panel, 0.0))  # type: ignore[call-overload]


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
    scale, thickness = text_scale(*image.shape[:2])
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


def draw_overlay(image: np.ndarray, lines: Sequence[str], bottom: bool = False, size: float = 0.85) -> None:
    """Text lines on a dark panel in the top-left corner (bottom-left with `bottom`), in place."""
    if not lines:
        return
    scale, thickness = text_scale(*image.shape[:2])
    scale *= size
    sizes = [cv2.getTextSize(line, FONT, scale, thickness) for line in lines]
    line_height = max(h + b for (_, h), b in sizes) + 6
    panel_w = max(w for (w, _), _ in sizes) + 12
    panel_h = line_height * len(lines) + 6
    h, w = image.shape[:2]
    top = max(h - panel_h, 0) if bottom else 0
    # Darken instead of paint over: the scene stays visible under the panel.
    shade(image[top : min(top + panel_h, h), : min(panel_w, w)])
    for i, line in enumerate(lines):
        y = top + 3 + line_height * (i + 1) - 6
        cv2.putText(image, line, (6, y), FONT, scale, TEXT_BGR, thickness, cv2.LINE_AA)


def annotate_frame(
    image: np.ndarray,
    boxes: np.ndarray,
    track_ids: Sequence[int],
    names: Sequence[str | None],
    statuses: Sequence[str],
    similarities: Sequence[float],
    lines: Sequence[str],
) -> None:
    """The stats panel, then the faces over it: a label is never hidden under the panel."""
    draw_overlay(image, lines)
    draw_faces(image, boxes, track_ids, names, statuses, similarities)


def draw_legend(image: np.ndarray, keys: Sequence[str] = ("q quit",)) -> None:
    """A small legend in the bottom-right corner: what each box colour means, then the keys, in place."""
    h, w = image.shape[:2]
    scale, thickness = text_scale(h, w)
    scale *= 0.7
    thickness = max(1, thickness - 1)
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    swatch = text_h
    pad = max(3, text_h // 3)
    items = [(label, colour) for label, colour in LEGEND]
    widths = [swatch + pad + cv2.getTextSize(label, FONT, scale, thickness)[0][0] for label, _ in items]
    colours_w = sum(widths) + pad * 2 * (len(items) - 1)
    keys_text = "   ".join(keys)
    keys_w = cv2.getTextSize(keys_text, FONT, scale, thickness)[0][0] if keys_text else 0
    line_h = text_h + baseline + pad
    rows = 2 if keys_text else 1
    panel_w = max(colours_w, keys_w) + 2 * pad
    panel_h = line_h * rows + pad
    left, top = max(w - panel_w, 0), max(h - panel_h, 0)
    shade(image[top:h, left:w])
    x, y = left + pad, top + pad + text_h
    for (label, colour), width in zip(items, widths, strict=True):
        cv2.rectangle(image, (x, y - swatch), (x + swatch, y), colour, cv2.FILLED)
        cv2.putText(image, label, (x + swatch + pad, y), FONT, scale, TEXT_BGR, thickness, cv2.LINE_AA)
        x += width + 2 * pad
    if keys_text:
        cv2.putText(image, keys_text, (left + pad, y + line_h), FONT, scale, TEXT_BGR, thickness, cv2.LINE_AA)


def fit_lines(text: str, max_width: int, scale: float, thickness: int, max_lines: int = 4) -> list[str]:
    """`text` wrapped into lines no wider than `max_width` pixels: at spaces, and inside a word (a long
    URL) only when the word alone is too wide. Past `max_lines` the last line ends with "..."."""

    def width(line: str) -> int:
        return cv2.getTextSize(line, FONT, scale, thickness)[0][0]

    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if width(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while width(current) > max_width and len(current) > 1:
            cut = len(current) - 1
            while cut > 1 and width(current[:cut]) > max_width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and width(last + "...") > max_width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "..."]
    return lines


def draw_note(image: np.ndarray, text: str, colour: tuple[int, int, int] = NOTE_BGR) -> None:
    """`text` centred in `image` (a frame or a tile view) on a dark band, wrapped to fit, in place."""
    h, w = image.shape[:2]
    scale, thickness = text_scale(h, w)
    lines = fit_lines(text, max(w - 16, 8), scale, thickness)
    if not lines:
        return
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    line_h = text_h + baseline + 6
    band_h = line_h * len(lines) + 8
    top = max((h - band_h) // 2, 0)
    shade(image[top : min(top + band_h, h)], keep=0.2)
    for i, line in enumerate(lines):
        line_w = cv2.getTextSize(line, FONT, scale, thickness)[0][0]
        x = max((w - line_w) // 2, 2)
        y = top + 4 + line_h * i + text_h
        cv2.putText(image, line, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)
