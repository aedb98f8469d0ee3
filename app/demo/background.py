"""Procedural backgrounds: a muted gradient, soft blotches, a few low-contrast panels and fine grain."""

from __future__ import annotations

import cv2
import numpy as np


def make_background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (h,w,3) BGR uint8 background for frame `size` (w,h), the same for the same seed and size.

    Low contrast on purpose: enough texture that the video is not flat, nothing that looks like a face.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    # Two muted wall colours: a grey level each plus a small shared tint.
    tint = rng.uniform(-18, 18, 3)
    c0, c1 = (rng.uniform(70, 190, (2, 1)) + tint + rng.uniform(-8, 8, (2, 3))).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    xs = (np.arange(w, dtype=np.float32) / w - 0.5) * np.float32(np.cos(angle))
    ys = (np.arange(h, dtype=np.float32) / h - 0.5) * np.float32(np.sin(angle))
    proj = ys[:, None] + xs[None, :]
    ramp = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    image = c0 + (c1 - c0) * ramp[..., None]

    # Large soft blotches, mostly in brightness: a coarse random grid upsampled with cubic interpolation.
    gh, gw = max(2, h // 120), max(2, w // 120)
    coarse = rng.normal(0.0, 9.0, (gh, gw, 1)) + rng.normal(0.0, 2.5, (gh, gw, 3))
    coarse = coarse.astype(np.float32)
    image += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)

    # A few panels (doors, windows, frames on a wall), slightly lighter or darker than the wall.
    for _ in range(int(rng.integers(3, 7))):
        pw, ph = int(rng.uniform(0.08, 0.3) * w), int(rng.uniform(0.15, 0.6) * h)
        px, py = int(rng.uniform(0, w - pw)), int(rng.uniform(0, h - ph))
        image[py : py + ph, px : px + pw] += (rng.uniform(-16, 16) + rng.uniform(-4, 4, 3)).astype(np.float32)

    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(3.0)
    image = cv2.GaussianBlur(image, (0, 0), 1.2) + grain
    return np.clip(image, 0, 255).round().astype(np.uint8)
