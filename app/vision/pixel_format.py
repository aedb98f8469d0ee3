"""Pixel formats of ring frames and the one home of their conversions (the GPU's twin is in gpu_preprocess).

A ring slot holds a frame in one of two formats (the ring's header records which, `FrameRing.format`; the
ring lays its slots out, `frame_ring.slot_shape`):
- `bgr`: (H, W, 3) uint8, what OpenCV decodes to; the default everywhere.
- `nv12`: (H*3//2, W) uint8, what NVDEC hands out: the full-resolution Y plane (H rows) and then the
  interleaved U/V plane at half resolution (H/2 rows of W/2 pairs), each pair covering a 2x2 block. H and W
  are even. Kept so that an NVDEC capture only copies its 3 MB (1080p) instead of converting into 6 MB of
  BGR, and the torch GPU detector uploads half the bytes and converts there (`gpu_preprocess.nv12_to_bgr`).

Consumers do not branch on the format: they take a `FramePixels(ring.frame(slot), ring.format)` and ask it for
what they need, each computed from NV12 only when asked, and the full conversion at most once a frame:
- `bgr()`: the whole frame (a view of a BGR slot; for NV12 `nv12_to_bgr`, cv2's COLOR_YUV2BGR_NV12:
  BT.601 limited range, nearest chroma).
- `region(x0, y0, x1, y1)`: a BGR crop; from NV12 both planes are cropped (even-aligned) and only the crop
  is converted, equal to the same region of the full conversion.
- `every(step)`: frame[::step, ::step] in BGR (the scene-cut thumbnail), equal to the full conversion's.

Measured on the 2-core box (1080p, one OpenCV thread, `python -m app.vision.pixel_format`, medians of 200,
the box shared, so ranges of runs): the full NV12 -> BGR conversion 1.3-1.6 ms; 10 face regions of 200x200
0.40-0.48 ms; the thumbnail at step 15 0.14-0.17 ms (a BGR slot's 0.03 ms); a copy of the NV12 planes into
a slot 0.10-0.12 ms against 0.19-0.27 ms for a BGR frame's. So an NVDEC capture keeping NV12 saves its
conversion (1.3-1.6 ms here, most of the 4.6 ms a frame capture costs on the GPU host) for a 0.1 ms dearer
scene-cut thumbnail in tracking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

BGR = "bgr"
NV12 = "nv12"
PIXEL_FORMATS = (BGR, NV12)


def check_format(pixel_format: str) -> str:
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel format {pixel_format!r} is not one of {', '.join(PIXEL_FORMATS)}")
    return pixel_format


def frame_hw(pixel_format: str, data_shape: tuple[int, ...]) -> tuple[int, int]:
    """The picture's (H, W) from the shape of its data in `pixel_format`."""
    if check_format(pixel_format) == BGR:
        return int(data_shape[0]), int(data_shape[1])
    return int(data_shape[0]) * 2 // 3, int(data_shape[1])


def nv12_to_bgr(nv12: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The whole (H*3/2, W) NV12 frame as (H, W, 3) BGR, into `out` when given (1.3-1.6 ms at 1080p here)."""
    if out is not None:
        return cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12, dst=out)
    return cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12)


def bgr_to_nv12(bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) BGR as NV12 (OpenCV's I420 with its U and V planes interleaved), into `out` when given.

    Capture uses it only where a BGR picture must go into an NV12 ring (a placeholder, a letterboxed frame,
    a camera that came back through FFmpeg); tests make NV12 frames with it."""
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    if out is None:
        out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = i420[:h]
    quarter = h * w // 4
    chroma = out[h:].reshape(h // 2, w // 2, 2)
    chroma[..., 0] = i420[h:].reshape(-1)[:quarter].reshape(h // 2, w // 2)
    chroma[..., 1] = i420[h:].reshape(-1)[quarter:].reshape(h // 2, w // 2)
    return out


def nv12_region_to_bgr(nv12: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """BGR of the frame's pixels [y0:y1, x0:x1] (clipped to the frame), converting only that region.

    Both planes are cropped as views, widened to even bounds so every pixel keeps its own chroma pair, and
    converted by cv2 from the two planes: equal to the same region of `nv12_to_bgr`."""
    h, w = frame_hw(NV12, nv12.shape)
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(w, int(x1)), min(h, int(y1))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
    ax0, ay0 = x0 - x0 % 2, y0 - y0 % 2
    ax1, ay1 = x1 + x1 % 2, y1 + y1 % 2
    luma = nv12[ay0:ay1, ax0:ax1]
    chroma = nv12[h + ay0 // 2 : h + ay1 // 2, ax0:ax1]
    chroma = chroma.reshape(chroma.shape[0], -1, 2)  # (rows, pairs, UV): a view, the pairs are contiguous
    bgr = cv2.cvtColorTwoPlane(luma, chroma, cv2.COLOR_YUV2BGR_NV12)
    if (ax0, ay0, ax1, ay1) == (x0, y0, x1, y1):
        return bgr
    return np.ascontiguousarray(bgr[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0])


def nv12_every(nv12: np.ndarray, step: int) -> np.ndarray:
    """nv12_to_bgr(nv12)[::step, ::step] without converting the frame: the picked pixels' Y and chroma are
    laid out as a tiny NV12 image (each Y repeated over its own 2x2 block, which then has its pixel's UV
    pair) and converted by cv2: the same numbers (0.14-0.17 ms at 1080p, step 15)."""
    h, _ = frame_hw(NV12, nv12.shape)
    step = max(1, int(step))
    luma = nv12[:h:step, ::step]
    rows, cols = luma.shape
    # Each UV pair as one uint16, rows picked first, then columns: two small gathers (a 2-D fancy index of
    # the byte pairs cost 10x as much).
    pairs = nv12[h:].view(np.uint16)
    chroma = pairs[np.arange(rows) * step // 2][:, np.arange(cols) * step // 2]
    tiny = np.empty((rows * 3, cols * 2), np.uint8)  # NV12 of (2*rows, 2*cols)
    cv2.resize(luma, (cols * 2, rows * 2), dst=tiny[: 2 * rows], interpolation=cv2.INTER_NEAREST)
    tiny[2 * rows :].view(np.uint16)[...] = chroma
    return bgr_every(cv2.cvtColor(tiny, cv2.COLOR_YUV2BGR_NV12), 2)  # (a strided numpy copy: 3x slower)


def bgr_every(frame: np.ndarray, step: int) -> np.ndarray:
    """frame[::step, ::step] as a contiguous copy (the bytes OpenCV would copy it to).

    Where OpenCV's nearest-neighbour resize to (w / step, h / step) picks exactly those pixels (checked once
    per frame size, `_nearest_is_strided`), it makes the copy: 1080p at step 15, 33 -> 15 us with the frame
    out of cache. Otherwise each BGR pixel is viewed as one 3-byte element: numpy then copies 128 pixels a
    row in one inner loop instead of 3 bytes at a time (32 -> 18 us in cache, 97 -> 65 us from memory)."""
    if not (frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.flags.c_contiguous):
        return np.ascontiguousarray(frame[::step, ::step])
    h, w = frame.shape[:2]
    if step > 1 and _nearest_is_strided(h, w, step):
        return cv2.resize(frame, (w // step, h // step), interpolation=cv2.INTER_NEAREST)
    pixels = frame.view(np.dtype((np.void, 3))).reshape(h, w)[::step, ::step]
    return np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], pixels.shape[1], 3)


_NEAREST_IS_STRIDED: dict[tuple[int, int, int], bool] = {}


def _nearest_is_strided(h: int, w: int, step: int) -> bool:
    """Whether cv2.resize(INTER_NEAREST) of an h x w image to (w / step, h / step) samples exactly the pixels
    [::step, ::step]. It maps columns and rows independently (x from the width scale, y from the height
    scale), so it is tried once per size on a 2-row image whose pixels spell their column and a 2-column
    one whose pixels spell their row, resized at the same two scales (milliseconds even at 4K)."""
    key = (h, w, step)
    known = _NEAREST_IS_STRIDED.get(key)
    if known is None:
        known = h % step == 0 and w % step == 0 and max(h, w) < 65536
        for size in (w, h) if known else ():
            at = np.arange(size)
            spelled = np.stack([at & 255, at >> 8, at & 255], axis=-1).astype(np.uint8)  # (size, 3)
            line = np.ascontiguousarray(np.broadcast_to(spelled, (2, size, 3)))
            picked = cv2.resize(line, (size // step, 2), interpolation=cv2.INTER_NEAREST)
            known = known and bool(np.array_equal(picked, line[:, ::step]))
        _NEAREST_IS_STRIDED[key] = known
    return known


def write_bgr(target: np.ndarray, pixel_format: str, bgr: np.ndarray) -> None:
    """Put an (H, W, 3) BGR picture of the slot's size into `target`, a slot in `pixel_format`."""
    if pixel_format == BGR:
        np.copyto(target, bgr)
    else:
        bgr_to_nv12(bgr, out=target)


@dataclass
class FramePixels:
    """One frame's pixels in its ring's format; what a consumer asks for is made from them when asked.

    `data` is usually a view of a ring slot: use it only while the slot is held. `bgr()` of an NV12 frame
    is converted once and kept (into `out` when the caller gives a buffer to reuse)."""

    data: np.ndarray
    format: str = BGR
    _bgr: np.ndarray | None = field(default=None, repr=False)

    @property
    def hw(self) -> tuple[int, int]:
        return frame_hw(self.format, self.data.shape)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The picture's shape as BGR (H, W, 3), whatever the format (what shape-only readers need)."""
        h, w = self.hw
        return (h, w, 3)

    def bgr(self, out: np.ndarray | None = None) -> np.ndarray:
        """The whole frame as (H, W, 3) BGR: the slot itself for a BGR ring (a view, not a copy)."""
        if self.format == BGR:
            return self.data
        if self._bgr is None:
            usable = out is not None and out.shape == self.shape and out.dtype == np.uint8
            self._bgr = nv12_to_bgr(self.data, out if usable else None)
        return self._bgr

    def bgr_copy(self) -> np.ndarray:
        """The whole frame as BGR in an array of the caller's own (to draw on, to keep past the slot)."""
        if self.format == BGR:
            return self.data.copy()
        return nv12_to_bgr(self.data)  # a new array: not the kept conversion, which others may read

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """BGR of [y0:y1, x0:x1] clipped to the frame (a view for BGR, a converted copy for NV12)."""
        if self.format == BGR or self._bgr is not None:
            h, w = self.hw
            return self.bgr()[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        return nv12_region_to_bgr(self.data, x0, y0, x1, y1)

    def every(self, step: int) -> np.ndarray:
        """BGR frame[::step, ::step], contiguous (the scene-cut thumbnail's source)."""
        if self.format == BGR:
            return bgr_every(self.data, step)
        if self._bgr is not None:
            return bgr_every(self._bgr, step)
        return nv12_every(self.data, step)


def _measure() -> None:
    """The figures of the module docstring: `python -m app.vision.pixel_format` (1080p, synthetic frame)."""
    import time

    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), (0, 0), 3)
    nv12 = bgr_to_nv12(bgr)
    slot_nv12, slot_bgr, out = np.empty_like(nv12), np.empty_like(bgr), np.empty_like(bgr)
    boxes = [(100 + 170 * i, 300 + 40 * i) for i in range(10)]

    def median_ms(work: object, repeat: int = 200) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            work()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    cv2.setNumThreads(1)
    figures = {
        "full NV12 -> BGR": median_ms(lambda: nv12_to_bgr(nv12, out)),
        "10 regions 200x200": median_ms(
            lambda: [nv12_region_to_bgr(nv12, x, y, x + 200, y + 200) for x, y in boxes]
        ),
        "thumbnail step 15": median_ms(lambda: nv12_every(nv12, 15)),
        "thumbnail of BGR, step 15": median_ms(lambda: bgr_every(bgr, 15)),
        "copy NV12 into a slot": median_ms(lambda: np.copyto(slot_nv12, nv12)),
        "copy BGR into a slot": median_ms(lambda: np.copyto(slot_bgr, bgr)),
        "new NV12 array (.copy())": median_ms(lambda: nv12.copy()),
    }  # fmt: skip
    for name, ms in figures.items():
        print(f"{name:28s} {ms:6.3f} ms")


if __name__ == "__main__":
    _measure()
