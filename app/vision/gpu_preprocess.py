"""Detector letterbox and face alignment in torch, so frames cross PCIe once (as uint8) and stay on the GPU.

The functions mirror their OpenCV versions in app/vision (same geometry and normalisation) and run on any
torch device; on the CPU they exist for tests.

- `letterbox_batch`: frames (H,W,3) uint8 BGR -> (N,3,S,S) blob BGR minus (104,117,123), padded bottom/right
  with zeros, plus the per-frame scale: the same as `app.vision.retinaface.letterbox` (cv2.resize with
  fx=fy=scale, bilinear, rounded to uint8 like OpenCV's 8-bit path).
- `letterbox_nv12_batch`: the same blob from NV12 frames (H*3/2, W) uint8 (rings that keep NVDEC's planes,
  app/vision/pixel_format.py): each plane resized first, then converted to BGR with OpenCV's BT.601
  coefficients at the detector input's size; within a grey level or two of converting with OpenCV first.
- `warp_faces`: many faces from a few frames in one batched bilinear warp (`F.affine_grid` +
  `F.grid_sample`), given the 2x3 similarity matrices that map frame pixels to chip pixels (cv2.warpAffine's
  convention), then channel order and mean/std normalisation of the embedder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# The GPU twins of vision's preprocessing share its constants, so the two paths cannot drift apart.
from app.vision.alignment import PRESHRINK_BELOW_SCALE
from app.vision.retinaface import BGR_MEAN, letterbox_scale


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))


def _resized_hw(src_h: int, src_w: int, scale: float) -> tuple[int, int]:
    # OpenCV computes dsize = round(src * f) when given fx/fy.
    return max(1, int(round(src_h * scale))), max(1, int(round(src_w * scale)))


def _letterbox(
    frames: Sequence[torch.Tensor] | torch.Tensor,
    size: int | tuple[int, int],
    dtype: torch.dtype,
    out: torch.Tensor | None,
    picture_hw: Callable[[torch.Tensor], tuple[int, int]],
    resize: Callable[[torch.Tensor, int, int, float], torch.Tensor],
) -> tuple[torch.Tensor, list[float]]:
    """The letterbox both pixel formats share: each frame's picture (`picture_hw`) scaled to fit (`resize`:
    a (k, ...) stack of same-size frames -> (k, 3, rh, rw) BGR in 0-255), minus the mean, top-left in a
    zeroed (N,3,h,w) blob; and the scales.

    Frames of one size go through each kernel together: a per-frame loop launched ~20 small kernels a
    frame, which in a detector batch of 4-8 live frames cost more CPU and GPU gaps than the pixels did.
    `frames` may be an (N, ...) tensor (one size, no stacking) or a sequence of frames."""
    h, w = _as_hw(size)
    n = len(frames)
    device = frames[0].device if n else torch.device("cpu")
    blob = out if out is not None else torch.empty((n, 3, h, w), dtype=dtype, device=device)
    blob.zero_()  # zero = the mean colour after subtraction, which the model reads as background
    mean = torch.tensor(BGR_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scales: list[float] = [0.0] * n
    if isinstance(frames, torch.Tensor):  # one size: the whole batch is one run
        runs = [(0, n)] if n else []
    else:  # [start, end) runs of consecutive frames of one picture size
        sizes = [picture_hw(f) for f in frames]
        starts = [i for i in range(n) if i == 0 or sizes[i] != sizes[i - 1]]
        runs = list(zip(starts, [*starts[1:], n], strict=True))
    for a, b in runs:
        src_h, src_w = picture_hw(frames[a])
        scale = letterbox_scale((src_h, src_w), (h, w))
        rh, rw = _resized_hw(src_h, src_w, scale)
        stack = frames[a:b] if isinstance(frames, torch.Tensor) else torch.stack(list(frames[a:b]))
        resized = resize(stack, rh, rw, scale)
        ch, cw = min(rh, h), min(rw, w)
        blob[a:b, :, :ch, :cw] = (resized[:, :, :ch, :cw] - mean).to(blob.dtype)
        scales[a:b] = [float(scale)] * (b - a)
    return blob, scales


def letterbox_batch(
    frames: Sequence[torch.Tensor] | torch.Tensor,
    size: int | tuple[int, int],
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Letterbox each (H,W,3) uint8 BGR frame into one (N,3,h,w) batch on the frames' device.

    Returns (blob, scales) with input pixel = source pixel * scale. `out` (N,3,h,w) is reused when given.
    """

    def resize(stack: torch.Tensor, rh: int, rw: int, scale: float) -> torch.Tensor:
        nchw = stack.permute(0, 3, 1, 2).float()
        # Output size and mapping scale given separately, as cv2.resize(fx=scale) does (size is rounded,
        # the mapping uses exactly 1/scale); F.interpolate cannot take both.
        resized = torch.ops.aten.upsample_bilinear2d(nchw, [rh, rw], False, scale, scale)
        return resized.round_().clamp_(0, 255)  # OpenCV's 8-bit resize rounds to uint8

    return _letterbox(frames, size, dtype, out, lambda f: (int(f.shape[0]), int(f.shape[1])), resize)


# OpenCV's YUV420 -> RGB constants (color_yuv.simd.hpp, ITUR_BT_601_*): BT.601 coefficients times 2**20.
_SHIFT = 20
_CY, _CUB, _CUG, _CVG, _CVR = 1220542, 2116026, -409993, -852492, 1673527


def letterbox_nv12_batch(
    frames: Sequence[torch.Tensor] | torch.Tensor,
    size: int | tuple[int, int],
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """`letterbox_batch` for (H*3/2, W) uint8 NV12 frames: each plane is resized to the letterboxed size
    first (Y by the frame's scale, the half-resolution U/V by twice it, each chroma sample centred on its
    2x2 block as OpenCV's 4:2:0 conversion places it), then converted to BGR there with OpenCV's BT.601
    coefficients.

    Why not convert, then resize: at 1080p the full-size conversion is ~20 elementwise passes over 2M
    pixels a frame; with 16 cameras it took the GPU from 81 to 96 % busy and the pipeline from 1763 to
    1545 frames/s (H200, call 8). The conversion is affine per pixel, so resizing first gives the same
    picture up to rounding and the clamps (within a grey level or two here), on the ~8x fewer pixels of the
    detector input."""
    device = frames[0].device if len(frames) else torch.device("cpu")
    coeffs = torch.tensor([_CUB, _CUG, _CVG, _CVR], dtype=torch.float32, device=device) / (1 << _SHIFT)

    def resize(stack: torch.Tensor, rh: int, rw: int, scale: float) -> torch.Tensor:
        k, src_h, src_w = int(stack.shape[0]), int(stack.shape[1]) * 2 // 3, int(stack.shape[2])
        y = stack[:, :src_h].reshape(k, 1, src_h, src_w).float()
        uv = stack[:, src_h:].reshape(k, src_h // 2, src_w // 2, 2).permute(0, 3, 1, 2).float()
        y = torch.ops.aten.upsample_bilinear2d(y, [rh, rw], False, scale, scale)[:, 0]
        uv = torch.ops.aten.upsample_bilinear2d(uv, [rh, rw], False, 2 * scale, 2 * scale)
        luma = (y - 16.0).clamp_(min=0.0) * (_CY / (1 << _SHIFT))
        u, v = uv[:, 0] - 128.0, uv[:, 1] - 128.0
        bgr = torch.stack(
            (luma + coeffs[0] * u, luma + coeffs[1] * u + coeffs[2] * v, luma + coeffs[3] * v), dim=1
        )
        return bgr.round_().clamp_(0, 255)

    return _letterbox(frames, size, dtype, out, lambda f: (int(f.shape[0]) * 2 // 3, int(f.shape[1])), resize)


def _pixel_to_normalised(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """3x3 map from pixel coordinates (centres at integers) to grid_sample's [-1,1] (align_corners=False)."""
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]],
        dtype=dtype,
        device=device,
    )


def chip_to_frame_theta(
    matrices: torch.Tensor, frame_hw: tuple[int, int], chip_hw: tuple[int, int]
) -> torch.Tensor:
    """affine_grid thetas (N,2,3) for frame->chip matrices (N,2,3) in pixels (cv2.warpAffine convention)."""
    n = matrices.shape[0]
    dtype, device = torch.float64, matrices.device
    m = torch.zeros((n, 3, 3), dtype=dtype, device=device)
    m[:, :2] = matrices.to(dtype)
    m[:, 2, 2] = 1.0
    chip_to_frame = torch.linalg.inv(m)
    a_frame = _pixel_to_normalised(*frame_hw, dtype, device)
    a_chip_inv = torch.linalg.inv(_pixel_to_normalised(*chip_hw, dtype, device))
    theta = a_frame @ chip_to_frame @ a_chip_inv
    return theta[:, :2].float()


def pyramid_levels(matrices: torch.Tensor) -> torch.Tensor:
    """Per face, how many 2x box-filter halvings to apply before the bilinear warp (0 for most faces).

    A bilinear warp at a strong downscale reads 4 source pixels per output pixel and aliases; the CPU path
    pre-shrinks with INTER_AREA below scale 0.5 (app.vision.alignment), this one halves until scale >= 0.5.
    """
    scale = torch.sqrt(torch.abs(torch.linalg.det(matrices[:, :, :2].to(torch.float64))))
    levels = torch.ceil(torch.log2(PRESHRINK_BELOW_SCALE / scale.clamp_min(1e-6)))
    return levels.clamp_min(0).to(torch.int64)


def warp_faces(
    frames: Sequence[torch.Tensor],
    frame_index: Sequence[int] | np.ndarray | torch.Tensor,
    matrices: np.ndarray | torch.Tensor,
    chip_hw: tuple[int, int],
    channel_order: str,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Aligned, normalised embedder input (N,3,h,w) for N faces.

    frames: (H,W,3) uint8 BGR tensors on one device; frame_index[i]: which frame face i is in;
    matrices (N,2,3): frame pixels -> chip pixels; channel_order "RGB"|"BGR" of the chip; mean/std (3,) in
    that order. Outside the frame the chip is black (0), as cv2.warpAffine's default border.
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    h, w = int(chip_hw[0]), int(chip_hw[1])
    device = frames[0].device if len(frames) else torch.device("cpu")
    # The 3x3 algebra is tiny: it stays on the host (float64), only the grids go to the device.
    mats = torch.as_tensor(matrices.cpu().numpy() if torch.is_tensor(matrices) else np.asarray(matrices))
    mats = mats.to(torch.float64).reshape(-1, 2, 3)
    index = torch.as_tensor(
        frame_index.cpu().numpy() if torch.is_tensor(frame_index) else np.asarray(frame_index)
    )
    index = index.to(torch.int64).reshape(-1)
    n = int(mats.shape[0])
    chips = torch.empty((n, 3, h, w), dtype=torch.float32, device=device)
    levels = pyramid_levels(mats)
    for f in torch.unique(index).tolist():  # one grid_sample per (frame, level): frames may differ in size
        pyramid = [frames[f].permute(2, 0, 1).unsqueeze(0).float()]
        for level in torch.unique(levels[index == f]).tolist():
            rows = torch.nonzero((index == f) & (levels == level)).flatten()
            while len(pyramid) <= level:  # 2x2 box filter per level, like INTER_AREA's pre-shrink on the CPU
                pyramid.append(F.avg_pool2d(pyramid[-1], 2))
            src = pyramid[level]
            k = float(2**level)
            to_level0 = torch.tensor(
                [[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1]], dtype=torch.float64
            )
            theta = chip_to_frame_theta(mats[rows] @ to_level0, (src.shape[2], src.shape[3]), (h, w))
            grid = F.affine_grid(theta.to(device), [len(rows), 3, h, w], align_corners=False)  # (k,h,w,2)
            # grid_sample pairs input and grid batches; stack the k grids vertically to sample the frame once.
            tall = grid.reshape(1, len(rows) * h, w, 2)
            sampled = F.grid_sample(src, tall, mode="bilinear", padding_mode="zeros", align_corners=False)
            chips[rows.to(device)] = sampled.reshape(3, len(rows), h, w).permute(1, 0, 2, 3)
    if channel_order == "RGB":
        chips = chips.flip(1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return ((chips - mean_t) / std_t).to(dtype)


def upload_frames(frames: Sequence[np.ndarray], device: torch.device | str) -> list[torch.Tensor]:
    """(H,W,3) uint8 frames to `device` through pinned memory: the one PCIe crossing, 1 byte per channel."""
    device = torch.device(device)
    out = []
    for frame in frames:
        t = torch.from_numpy(np.ascontiguousarray(frame))
        if device.type == "cuda":
            t = t.pin_memory().to(device, non_blocking=True)
        out.append(t)
    return out
