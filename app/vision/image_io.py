"""Read any still image as BGR uint8: gray, alpha, 16-bit and float files converted, EXIF rotation applied."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from app.errors import UserError


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded image of any depth and 1/3/4 channels to 3-channel BGR uint8."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, rounded
    elif image.dtype.kind == "f":
        # float images (EXR, float TIFF) are in [0, 1] by convention
        image = np.clip(np.nan_to_num(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def read_image(path: Path | str) -> np.ndarray:
    """Return the image at `path` as (H,W,3) BGR uint8; UserError if it is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist; check the path")
    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode also handles non-ASCII paths
    # ANYDEPTH keeps 16-bit/float samples for a proper conversion; COLOR (unlike UNCHANGED) applies EXIF
    # rotation and drops alpha, keeping the stored colours of transparent pixels.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
    if image is None or image.size == 0:
        raise UserError(
            f"image {path} is empty or not a readable image (jpg, png, bmp, tiff, webp...); replace it"
        )
    return to_bgr_uint8(image)
