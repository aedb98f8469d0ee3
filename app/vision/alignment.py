"""Face alignment: least-squares similarity from the 5 RetinaFace points to the embedder's template, a warp.

Landmark order everywhere is RetinaFace's, in IMAGE coordinates: [image-left eye, image-right eye, nose,
image-left mouth corner, image-right mouth corner] (for a frontal face the first point has the smaller x;
it is the person's right eye). Templates in `app.inference.spec` use the same order.

`align_faces` takes a BGR frame or a ring frame in any pixel format (`FramePixels`): from an NV12 frame it
converts only the region each chip is warped from (`chip_region`). 10 dlib chips of ~180 px faces from a
1080p frame (2-core box, interleaved medians of 200): 3.3-4.0 ms that way, 3.8-4.5 ms converting the whole
frame first, 2.4-2.9 ms from a BGR frame (the warps themselves). The chips are those of the whole frame's
conversion but for the warp's fixed-point rounding of a shifted translation (one level, on a few pixels
in a million).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from app.vision.pixel_format import BGR, FramePixels

if TYPE_CHECKING:
    from app.inference.spec import EmbedderSpec

# Shrink with INTER_AREA first when the face is this many times larger than the chip: a bilinear warp at a
# strong downscale samples only 4 source pixels per output pixel and aliases (dlib uses a pyramid for this).
PRESHRINK_BELOW_SCALE = 0.5
# Frame pixels kept around a chip's source region when only that region is converted: more than the
# bilinear warp's reach (1 px) and the pre-shrink's own margin (2 px), so both read what the frame has.
REGION_MARGIN = 4


def estimate_similarities(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms (N,2,3) mapping each src (N,K,2) onto dst (K,2).

    This is Umeyama's method specialised to 2-D: with centred points the optimal scaled rotation
    [[a,-b],[b,a]] has the closed form a = sum(s.d)/sum(|s|^2), b = sum(s x d)/sum(|s|^2), which never
    reflects, so no SVD or sign correction is needed and it vectorises over faces.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    src_mean = src.mean(axis=1, keepdims=True)  # (N,1,2)
    dst_mean = dst.mean(axis=0)  # (2,)
    s = src - src_mean
    d = dst - dst_mean
    norm = np.maximum((s**2).sum(axis=(1, 2)), 1e-12)
    a = (s[..., 0] * d[:, 0] + s[..., 1] * d[:, 1]).sum(axis=1) / norm
    b = (s[..., 0] * d[:, 1] - s[..., 1] * d[:, 0]).sum(axis=1) / norm
    matrices = np.empty((src.shape[0], 2, 3), np.float64)
    matrices[:, 0, 0] = a
    matrices[:, 0, 1] = -b
    matrices[:, 1, 0] = b
    matrices[:, 1, 1] = a
    matrices[:, :, 2] = dst_mean - np.einsum("nij,nj->ni", matrices[:, :, :2], src_mean[:, 0, :])
    return matrices


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2,3) mapping src (K,2) points onto dst (K,2) (Umeyama, no reflection)."""
    return estimate_similarities(np.asarray(src)[None], dst)[0]


def _preshrink(
    image: np.ndarray, matrix: np.ndarray, chip_wh: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the region the chip covers, shrink it (INTER_AREA) to about chip scale, adjust the transform."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    x0, y0, x1, y1 = chip_region(matrix, chip_wh, image.shape[:2])
    crop = image[y0:y1, x0:x1]
    new_w = max(1, round(crop.shape[1] * scale))
    new_h = max(1, round(crop.shape[0] * scale))
    small = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_AREA)
    kx, ky = new_w / crop.shape[1], new_h / crop.shape[0]
    # OpenCV resize maps pixel centres: source x = (small x + 0.5) / kx - 0.5 (+ crop origin).
    to_source = np.array([[1 / kx, 0, x0 + 0.5 / kx - 0.5], [0, 1 / ky, y0 + 0.5 / ky - 0.5], [0, 0, 1]])
    return small, matrix @ to_source


def chip_region(
    matrix: np.ndarray, chip_wh: tuple[int, int], frame_hw: tuple[int, ...], margin: int = 2
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the frame pixels a chip is warped from (its corners mapped back through the
    source->chip `matrix`), widened by `margin`, clipped to the frame (never empty)."""
    w, h = chip_wh
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ inverse.T
    img_h, img_w = int(frame_hw[0]), int(frame_hw[1])
    # Python's min/max on floats: np.clip of scalars cost 20 us each (10 faces a frame, on the hot path).
    xs, ys = corners[:, 0].tolist(), corners[:, 1].tolist()
    x0 = min(max(math.floor(min(xs)) - margin, 0), img_w - 1)
    y0 = min(max(math.floor(min(ys)) - margin, 0), img_h - 1)
    x1 = min(max(math.ceil(max(xs)) + margin, x0 + 1), img_w)
    y1 = min(max(math.ceil(max(ys)) + margin, y0 + 1), img_h)
    return x0, y0, x1, y1


def region_source(
    frame: FramePixels, matrix: np.ndarray, out_wh: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(BGR of the frame region a warp by the (2,3) frame->output `matrix` reads, the matrix from that
    region's pixels): a frame in another format (NV12) is converted only there."""
    x0, y0, x1, y1 = chip_region(matrix, out_wh, frame.shape, REGION_MARGIN)
    # Even bounds (more margin): NV12's chroma pairs need no crop after the conversion (0.05 against 0.09 ms
    # a 190 px region here).
    x0, y0, x1, y1 = x0 - x0 % 2, y0 - y0 % 2, x1 + x1 % 2, y1 + y1 % 2
    matrix = matrix.copy()
    matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)  # region pixels -> output
    return frame.region(x0, y0, x1, y1), matrix


def warp_face(
    image: np.ndarray,
    matrix: np.ndarray,
    chip_wh: tuple[int, int],
    edge: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Warp one face with the (2,3) source->chip transform; pre-shrinks faces much larger than the chip.

    Chip pixels outside the image are black, or with `edge` the image's nearest edge pixel. `out`: a
    contiguous (h, w, channels) uint8 array to warp into (returned), instead of a new one."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < PRESHRINK_BELOW_SCALE:
        image, matrix = _preshrink(image, matrix, chip_wh)
    border = cv2.BORDER_REPLICATE if edge else cv2.BORDER_CONSTANT
    return cv2.warpAffine(
        image, matrix, chip_wh, dst=out, flags=cv2.INTER_LINEAR, borderMode=border, borderValue=(0, 0, 0)
    )


def align_faces(
    image_bgr: np.ndarray | FramePixels, landmarks: np.ndarray, spec: EmbedderSpec, edge: bool = False
) -> np.ndarray:
    """Aligned chips (N,h,w,3) uint8 in the spec's channel order, one per face's (5,2) landmarks; `edge` as in
    `warp_face` (photos cut close around the face). `image_bgr`: a BGR frame, or a ring frame in any format
    (from NV12 only each chip's region is converted)."""
    landmarks = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    w, h = spec.input_size
    chips = np.empty((landmarks.shape[0], h, w, 3), np.uint8)
    if landmarks.shape[0] == 0:
        return chips
    regions = isinstance(image_bgr, FramePixels) and image_bgr.format != BGR
    if isinstance(image_bgr, FramePixels) and not regions:
        image_bgr = image_bgr.bgr()
    matrices = estimate_similarities(landmarks, spec.template)
    rgb = spec.channel_order == "RGB" and len(image_bgr.shape) == 3 and image_bgr.shape[2] == 3
    for i, matrix in enumerate(matrices):
        # Warped straight into its row, channels swapped there in place: no warped copy to copy in, and no
        # reversed-stride copy of all the chips (numpy's is byte by byte: ~0.1 ms a chip).
        row = chips[i]
        if isinstance(image_bgr, FramePixels):
            source, matrix = region_source(image_bgr, matrix, (w, h))
        else:
            source = image_bgr
        chip = warp_face(source, matrix, (w, h), edge, out=row)
        if chip.ctypes.data != row.ctypes.data:  # OpenCV made its own (an image that is not 3-channel)
            row[...] = chip
        if rgb:
            cv2.cvtColor(row, cv2.COLOR_BGR2RGB, dst=row)
    if spec.channel_order == "RGB" and not rgb:
        chips = np.ascontiguousarray(chips[..., ::-1])
    return chips
