"""A contact sheet: face crops side by side in a grid, each with a short caption, for review."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CELL = 128  # px per tile side
CAPTION_H = 18  # px of caption strip under each tile
BACKGROUND = (32, 32, 32)


def contact_sheet(
    images: Sequence[np.ndarray | None], captions: Sequence[str], columns: int = 8, title: str = ""
) -> np.ndarray:
    """A BGR image of `images` (BGR, any size; None = a missing tile) in a grid with their captions."""
    count = max(len(images), 1)
    columns = max(1, min(columns, count))
    rows = (count + columns - 1) // columns
    top = 28 if title else 0
    sheet = np.full((top + rows * (CELL + CAPTION_H), columns * CELL, 3), BACKGROUND, np.uint8)
    if title:
        cv2.putText(
            sheet, title[:80], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA
        )
    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(index, columns)
        y, x = top + r * (CELL + CAPTION_H), c * CELL
        if image is None:
            cv2.putText(sheet, "missing", (x + 24, y + CELL // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 255), 1, cv2.LINE_AA)  # fmt: skip
        else:
            h, w = image.shape[:2]
            scale = CELL / max(h, w)
            tile = cv2.resize(
                image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
            th, tw = tile.shape[:2]
            oy, ox = y + (CELL - th) // 2, x + (CELL - tw) // 2
            sheet[oy : oy + th, ox : ox + tw] = tile if tile.ndim == 3 else tile[..., None]
        cv2.putText(sheet, caption[:20], (x + 3, y + CELL + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (220, 220, 220), 1, cv2.LINE_AA)  # fmt: skip
    return sheet
