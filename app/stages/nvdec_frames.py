"""Where NVDEC's decoded frames wait between the decoder and the ring slot (`NVDEC_MEMORY`).

The decoder reuses its output surfaces, so each frame is copied out before the next is decoded, and the
capture's decoding thread runs a few frames ahead of the reader (`nvdec.DECODED_AHEAD`). Two ways:

- `host` (`HostFrames`): the decoder writes into host memory (its own copy down from the GPU) and each frame
  is copied out of its buffer into a new array; `read()` then copies (NV12 ring) or converts (BGR ring)
  that array into the slot: two host copies of the 3 MB NV12 planes at 1080p.
- `device` (`DeviceFrames`): the decoder writes into GPU memory; each surface is copied on the GPU into one
  of a few buffers of our own (`pool`), and the one copy to the host is into the ring slot itself. Needs
  torch with CUDA in the capture process (it shares the decoder's primary context). Measured on the H200
  host (testbench/gpu/bench_decode.py, 16 streams x 300 frames of a 1080p H.264 clip, CPU ms a frame after
  the first): 0.95 with the copy into a page-locked buffer, against 2.22 for host NV12 copied into an NV12
  buffer and 4.89 for NvdecCapture converting to BGR (testbench/gpu/decode_results_h200.jsonl, call 7).
  In the 16-camera pipeline, though, it gave 1236 frames/s against 1506 for `host` (call 8, the GPU 96 %
  busy: torch's copies in 16 more CUDA contexts), so `host` is the default.

Both hand `read()` a host array of the (H*3/2, W) NV12 planes through `to_host(item, out)`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

MEMORIES = ("host", "device")


class HostFrames:
    """Frames decoded into host memory, each copied out of the decoder's reused buffer."""

    memory = "host"

    def __init__(self, hw: tuple[int, int]) -> None:
        self.hw = hw

    def planes(self, frame: Any) -> np.ndarray:
        """A decoded host frame's (H*3/2, W) NV12 planes, viewed in place: through DLPack, or from its plane
        pointer (as PyNvVideoCodec's own samples read host frames) when DLPack offers no CPU array."""
        h, w = self.hw
        try:
            return np.from_dlpack(frame).reshape(h * 3 // 2, w)
        except (TypeError, RuntimeError, BufferError, ValueError):
            pointer = ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
            return np.ctypeslib.as_array(pointer, shape=(h * 3 // 2 * w,)).reshape(h * 3 // 2, w)

    def keep(self, frame: Any) -> np.ndarray:
        return self.planes(frame).copy()

    def to_host(self, item: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """`item`'s NV12 planes in `out` (copied) when given, else `item` itself (nothing else holds it)."""
        if out is None:
            return item
        np.copyto(out, item)
        return out


class DeviceFrames:
    """Frames decoded into GPU memory, kept in a pool of GPU buffers until `to_host` copies one into a slot.

    `pool` must exceed the frames that can be held at once (the decoded-ahead queue, the one being read and
    the one being decoded): a buffer is written again `pool` frames later."""

    memory = "device"

    def __init__(self, hw: tuple[int, int], pool: int, device: str = "cuda") -> None:
        import torch  # only a device-memory capture needs it

        self.torch = torch
        self.hw = hw
        h, w = hw
        self.device = torch.device(device)
        shape = (h * 3 // 2, w)
        self._pool = [torch.empty(shape, dtype=torch.uint8, device=self.device) for _ in range(pool)]
        self._next = 0
        on_gpu = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if on_gpu else None  # type: ignore[no-untyped-call]

    def keep(self, frame: Any) -> Any:
        """Copy the decoder's surface (reused by its next frames) into the next pool buffer, on the GPU."""
        torch = self.torch
        buf = self._pool[self._next]
        self._next = (self._next + 1) % len(self._pool)
        if self._stream is None:
            buf.copy_(torch.from_dlpack(frame).reshape(buf.shape))
            return buf
        with torch.cuda.stream(self._stream):  # from_dlpack orders the copy after the decoder's work
            buf.copy_(torch.from_dlpack(frame).reshape(buf.shape))
        self._stream.synchronize()  # the surface may be decoded into again once this returns
        return buf

    def to_host(self, item: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The buffer's NV12 planes copied to `out` (a ring slot) or to a new host array; the copy is done
        when this returns."""
        if out is None:
            out = np.empty(tuple(item.shape), np.uint8)
        self.torch.from_numpy(out).copy_(item)  # synchronous: a device-to-host copy into pageable memory
        return out
