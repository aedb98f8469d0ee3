"""A mosaic of camera pictures on one canvas: a near-square grid, each picture letterboxed in its tile.

Pure (no window, no state): `compose_mosaic` paints into a canvas (reusable through `out`) what the window
shows; `tile_at` maps a click back to the camera under it. Each tile carries its camera's name (with its
number key for the first nine) and, when there is one, a note such as "reconnecting" or an error line: over
a dimmed picture when the camera has shown one, else on a dark tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from app.vision.drawing import draw_note, draw_overlay, shade

BACKGROUND_BGR = (12, 12, 12)  # between tiles and in letterbox bars
EMPTY_TILE_BGR = (36, 36, 36)  # a camera with no picture yet: visibly a tile, not the background
GAP = 2  # pixels between tiles
MAX_CANVAS_WH = (1920, 1080)

Rect = tuple[int, int, int, int]  # x, y, width, height


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the grid for n tiles: as square as it goes, wider than tall: 1x2, 2x2, 2x3, 3x3..."""
    if n < 1:
        raise ValueError(f"a mosaic needs at least one tile, not {n}")
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile_rects(n: int, canvas_wh: tuple[int, int], gap: int = GAP) -> list[Rect]:
    """The n tiles' (x, y, w, h) in row-major order, splitting the canvas evenly with `gap` between tiles."""
    rows, cols = grid_shape(n)
    width, height = canvas_wh
    xs = [round(i * (width + gap) / cols) for i in range(cols + 1)]
    ys = [round(i * (height + gap) / rows) for i in range(rows + 1)]
    rects = []
    for index in range(n):
        r, c = divmod(index, cols)
        x, y = xs[c], ys[r]
        rects.append((x, y, max(xs[c + 1] - gap - x, 1), max(ys[r + 1] - gap - y, 1)))
    return rects


def canvas_size(
    n: int, frame_wh: tuple[int, int], max_wh: tuple[int, int] = MAX_CANVAS_WH
) -> tuple[int, int]:
    """A canvas for n tiles of this frame's aspect, as large as fits in `max_wh` and never larger than the
    frames themselves need (four 640x360 cameras make a 1282x722 canvas, not a 1920x1080 one)."""
    rows, cols = grid_shape(n)
    frame_w, frame_h = frame_wh
    aspect = frame_w / max(frame_h, 1)
    fit_w = (max_wh[0] - GAP * (cols - 1)) / cols
    fit_h = (max_wh[1] - GAP * (rows - 1)) / rows
    tile_w = min(fit_w, fit_h * aspect, frame_w)
    tile_h = tile_w / aspect
    return round(tile_w * cols + GAP * (cols - 1)), round(tile_h * rows + GAP * (rows - 1))


def tile_at(rects: Sequence[Rect], x: int, y: int) -> int | None:
    """Index of the tile that holds pixel (x, y), None for a gap or outside the canvas."""
    for index, (tx, ty, tw, th) in enumerate(rects):
        if tx <= x < tx + tw and ty <= y < ty + th:
            return index
    return None


def letterbox_rect(image_wh: tuple[int, int], rect: Rect) -> Rect:
    """Where an image of this size goes inside `rect`: scaled to fit, aspect kept, centred."""
    x, y, w, h = rect
    image_w, image_h = image_wh
    scale = min(w / image_w, h / image_h)
    fit_w, fit_h = max(1, min(w, round(image_w * scale))), max(1, min(h, round(image_h * scale)))
    return x + (w - fit_w) // 2, y + (h - fit_h) // 2, fit_w, fit_h


def tile_label(index: int, name: str) -> str:
    """The tile's caption: its number key (1-9, which shows this camera alone) and its name, e.g. "1 door"."""
    return f"{index + 1} {name}" if index < 9 else name


def compose_mosaic(
    tiles: Sequence[np.ndarray | None],
    names: Sequence[str],
    notes: Sequence[str | None],
    canvas_wh: tuple[int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """All cameras' latest pictures (None = none yet) on one BGR canvas of `canvas_wh`, named and noted.

    `out`, when given, must be a (h, w, 3) uint8 array of that size; it is painted and returned (no new
    allocation a frame). Tiles may differ in size and shape; each keeps its aspect.
    """
    if not len(tiles) == len(names) == len(notes):
        raise ValueError(f"{len(tiles)} tiles, {len(names)} names and {len(notes)} notes: give one each")
    width, height = canvas_wh
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    elif out.shape != (height, width, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be a ({height}, {width}, 3) uint8 array, not {out.shape} {out.dtype}")
    out[:] = BACKGROUND_BGR
    for index, rect in enumerate(tile_rects(len(tiles), canvas_wh)):
        x, y, w, h = rect
        region = out[y : y + h, x : x + w]
        image, note = tiles[index], notes[index]
        if image is None:
            region[:] = EMPTY_TILE_BGR
        else:
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            ix, iy, iw, ih = letterbox_rect((image.shape[1], image.shape[0]), rect)
            shrink = iw < image.shape[1]
            fitted = cv2.resize(image, (iw, ih), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            out[iy : iy + ih, ix : ix + iw] = fitted
            if note:
                shade(region, keep=0.5)  # a stale picture: dimmed, so the note is what one reads
        if note:
            draw_note(region, note)
        # Bottom-left: the top-left corner of each picture holds that camera's own stats panel.
        draw_overlay(region, [tile_label(index, names[index])], bottom=True, size=1.0)
    return out
