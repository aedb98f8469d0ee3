"""RetinaFace on the GPU for the detection stage (backend=torch): ring slot -> GPU once, only candidates back.

Per batch of frames:
1. Upload: each frame goes from its shared-memory ring slot to the GPU as uint8 (6 MB at 1080p), once. The
   ring's pixel block is page-locked for CUDA in this process (`cudaHostRegister`), so the copy is a DMA
   straight out of the slot with no CPU copy; where registering fails, frames pass through a pinned staging
   buffer (one memcpy each). A ring that keeps NVDEC's NV12 frames (app/vision/pixel_format.py) uploads
   half the bytes (3 MB at 1080p), so the capture process converts nothing.
2. Letterbox + mean subtraction on the GPU (`gpu_preprocess.letterbox_batch`), in the model's dtype; NV12
   frames are resized plane by plane and converted to BGR at the input's size (`letterbox_nv12_batch`).
3. The model (`TorchModel.run_torch`: CUDA graphs per batch bucket, every bucket up to `max_batch` captured at
   warm-up so none is captured mid-run).
4. Only the candidate priors come back: score above `floor`, at most `top_k` per frame. The raw outputs are
   16 floats per prior (1.07 MB per frame at 640x640); pickled through the queue to post-processing they cost
   about 1 ms per frame in each process. The candidates are ~0.1-20 KB and decode to the same faces (see
   `CandidateDetections` in app/pipeline/messages.py).

Runs on a CPU torch device too (no registration, no graphs), which is how the tests check it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.inference.batching import chunk_slices, stage_batch
from app.inference.torch_backend import (
    COMPILE_BATCHES,
    COMPILE_MODE,
    DEFAULT_BUCKETS,
    TorchModel,
    pick_bucket,
)
from app.vision import gpu_preprocess
from app.vision.pixel_format import BGR, NV12
from app.vision.retinaface import PRE_NMS_TOP_K, detector_input_hw, split_outputs

log = logging.getLogger(__name__)

RAW_WIDTH = 16  # loc 4 + conf 2 + landmarks 10 values per prior


@dataclass
class FrameCandidates:
    """One frame's candidate priors: rows of the raw outputs where the face score passed the floor."""

    prior_index: np.ndarray  # (K,) int64, ascending
    loc: np.ndarray  # (K,4) float32
    conf: np.ndarray  # (K,2) float32
    landmarks: np.ndarray  # (K,10) float32
    scale: float  # detector input pixel = source pixel * scale


def compact_candidates(
    loc: torch.Tensor, conf: torch.Tensor, landmarks: torch.Tensor, floor: float, top_k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame (prior indices (K,), raw rows (K,16)) where conf[...,1] > floor, keeping the top_k scores.

    Keeping the top_k best before decoding changes nothing downstream: the decoder keeps the PRE_NMS_TOP_K
    best scores above its own threshold (>= floor), and those are always among these. One device->host copy.
    """
    n, priors = conf.shape[0], conf.shape[1]
    scores = conf[:, :, 1]
    mask = scores > floor
    if top_k < priors:
        kth = torch.topk(scores, top_k, dim=1).values[:, -1:]
        mask &= scores >= kth
    frame_idx, prior_idx = mask.nonzero(as_tuple=True)
    packed = torch.cat((loc, conf, landmarks), dim=2)[frame_idx, prior_idx]
    # Indices travel as float32 beside the rows (exact below 2**24 priors): one transfer, one sync.
    host = torch.cat((packed.float(), frame_idx[:, None].float(), prior_idx[:, None].float()), dim=1).cpu()
    host = host.numpy()
    frames = host[:, RAW_WIDTH].astype(np.int64)
    counts = np.bincount(frames, minlength=n)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    # nonzero() is row-major: rows come grouped by frame, priors ascending within a frame.
    return [
        (host[a:b, RAW_WIDTH + 1].astype(np.int64), host[a:b, :RAW_WIDTH])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


class RingUploader:
    """Copies ring frames to the device: straight from a page-locked ring, else via pinned staging.

    Several rings (one per camera) may be registered; device and staging buffers are kept per frame size,
    since cameras of different resolutions alternate in the batches of one detector."""

    def __init__(self, device: torch.device, max_batch: int) -> None:
        self.device = device
        self.max_batch = max_batch
        self._registered: list[tuple[int, int]] = []  # (start, end) addresses page-locked for CUDA
        self._register_tried: set[int] = set()
        self._device_bufs: dict[tuple[int, ...], torch.Tensor] = {}
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def zero_copy(self) -> bool:
        return bool(self._registered)

    def registered(self, first_slot: np.ndarray) -> bool:
        return first_slot.ctypes.data in self._register_tried

    def register(self, first_slot: np.ndarray, slots: int) -> bool:
        """Page-lock `slots` contiguous frames starting at `first_slot` (a ring's pixel block) for DMA.

        Once per ring; False (and the staging path) when CUDA refuses, e.g. where locked memory is capped.
        """
        base = first_slot.ctypes.data
        if base in self._register_tried or self.device.type != "cuda":
            return self._in_registered(first_slot)
        self._register_tried.add(base)
        page = mmap.PAGESIZE
        # The ring's mapping starts on a page and is a whole number of pages long: rounding out stays inside.
        start = base - base % page
        end = base + slots * first_slot.nbytes
        end += -end % page
        try:
            error = torch.cuda.cudart().cudaHostRegister(start, end - start, 0)
            failed = int(getattr(error, "value", error)) != 0
        except (RuntimeError, TypeError, AttributeError) as exc:  # a torch without the binding
            error, failed = exc, True
        if failed:
            log.warning(
                "cudaHostRegister of a frame ring failed (%s); its frames go through pinned staging", error
            )
            return False
        self._registered.append((start, end))
        log.info("frame ring page-locked for CUDA: %.0f MB", (end - start) / 1e6)
        return True

    def unregister(self) -> None:
        if self._registered:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                for start, _ in self._registered:
                    torch.cuda.cudart().cudaHostUnregister(start)
            self._registered = []

    def upload(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """(n, *shape) uint8 on the device (all frames one shape: (H,W,3) BGR or (H*3/2,W) NV12); the copies
        are queued on the current stream (async on CUDA)."""
        n = len(frames)
        shape = tuple(frames[0].shape)
        buf = self._device_bufs.get(shape)
        if buf is None:
            buf = torch.empty((self.max_batch, *shape), dtype=torch.uint8, device=self.device)
            self._device_bufs[shape] = buf
        for i, frame in enumerate(frames):
            if self.device.type != "cuda" or self._in_registered(frame):
                buf[i].copy_(torch.from_numpy(frame), non_blocking=True)
            else:
                buf[i].copy_(self._stage(i, frame), non_blocking=True)
        return buf[:n]

    def _in_registered(self, frame: np.ndarray) -> bool:
        address = frame.ctypes.data
        return any(start <= address and address + frame.nbytes <= end for start, end in self._registered)

    def _stage(self, i: int, frame: np.ndarray) -> torch.Tensor:
        staging = self._staging.get(frame.shape)
        if staging is None:
            staging = torch.empty((self.max_batch, *frame.shape), dtype=torch.uint8).pin_memory()
            self._staging[frame.shape] = staging
        # The previous batch's copies out of this buffer finished: detect() ends with a synchronising read.
        np.copyto(staging[i].numpy(), frame)
        return staging[i]


class TorchDetector:
    """RetinaFace through `TorchModel` with GPU preprocessing; `detect(frames)` -> candidates per frame."""

    def __init__(
        self,
        model_path: Path,
        det_size: int = 640,
        max_batch: int = 16,
        precision: str | None = None,
        device: str | None = None,
        threads: int = 0,
        floor: float = 0.01,
        top_k: int = PRE_NMS_TOP_K,
        compile_graphs: bool = False,
        compile_batches: str = "sparse",
    ) -> None:
        self.model = TorchModel(
            Path(model_path),
            threads=threads,
            device=device,
            precision=precision,
            buckets=COMPILE_BATCHES[compile_batches] if compile_graphs else DEFAULT_BUCKETS,
            compile_mode=COMPILE_MODE if compile_graphs else None,
        )
        self.device = self.model.device
        if self.device.type == "cuda" and threads > 0:
            torch.set_num_threads(int(threads))  # the CPU only launches kernels here
        self.input_hw = detector_input_hw(self.model, det_size)
        self.max_batch = stage_batch(max_batch, self.model.inputs[0].fixed_batch)
        self.floor = float(floor)
        self.top_k = int(top_k)
        self.uploader = RingUploader(self.device, self.max_batch)
        h, w = self.input_hw
        self._blob = torch.empty((self.max_batch, 3, h, w), dtype=self.model.dtype, device=self.device)

    @property
    def precision(self) -> str:
        return self.model.precision

    def _buckets(self) -> list[int]:
        return sorted({pick_bucket(b, self.model.buckets) for b in range(1, self.max_batch + 1)})

    def warmup(self) -> None:
        """Capture the graph of every batch bucket up to max_batch now, so none is captured mid-run, and
        run the whole path once (a wrong model fails here, at start)."""
        if self.model.cuda_graphs:
            self.model.warmup(self._buckets(), self.input_hw)
        h, w = self.input_hw
        self.detect([np.zeros((h, w, 3), np.uint8)])

    def warm_path(self, frame_hw: tuple[int, int], force: bool = False) -> None:
        """Run a batch of every bucket of noise frames of `frame_hw` (BGR, then NV12) through the whole path:
        upload, conversion, letterbox, model and compaction load their kernels now, not in the first batches
        of a run (those took 30-45 ms where later ones took 6: H200, 16 cameras x 30 fps). Only on CUDA,
        unless `force` (tests)."""
        if self.device.type != "cuda" and not force:
            return
        h, w = frame_hw
        noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        nv12 = np.random.default_rng(1).integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
        for bucket in self._buckets():
            self.detect([noise] * bucket)
            self.detect([nv12] * bucket, [NV12] * bucket)

    def prepare(self, input_hw: tuple[int, int]) -> None:
        """Capture the graphs of another input size now, so that a later `refit` to it captures nothing."""
        if self.model.cuda_graphs:
            self.model.warmup(self._buckets(), (int(input_hw[0]), int(input_hw[1])))

    def refit(self, input_hw: tuple[int, int]) -> None:
        """Run at another detector input size from now on (e.g. fitted to the cameras' frames): its graphs
        are captured here, before the first frame."""
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        h, w = self.input_hw
        self._blob = torch.empty((self.max_batch, 3, h, w), dtype=self.model.dtype, device=self.device)
        self.warmup()

    def register_ring(self, first_slot: np.ndarray, slots: int) -> bool:
        return self.uploader.register(first_slot, slots)

    def detect(
        self, frames: Sequence[np.ndarray], formats: Sequence[str] | None = None
    ) -> list[FrameCandidates]:
        """Candidates for each uint8 frame, in order: (H,W,3) BGR, or (H*3/2,W) NV12 where `formats` says
        so (None: all BGR). Frames of each format and size go through the model together (every frame is
        letterboxed to the one detector input), batches over max_batch split."""
        kinds = formats if formats is not None else [BGR] * len(frames)
        by_shape: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for i, frame in enumerate(frames):
            by_shape.setdefault((kinds[i], tuple(frame.shape)), []).append(i)
        out: dict[int, FrameCandidates] = {}
        for (pixel_format, _), indices in by_shape.items():
            for part in chunk_slices(len(indices), self.max_batch):
                chunk = indices[part]
                found = self._detect_chunk([frames[k] for k in chunk], pixel_format)
                out.update(zip(chunk, found, strict=True))
        return [out[i] for i in range(len(frames))]

    def _detect_chunk(self, frames: Sequence[np.ndarray], pixel_format: str = BGR) -> list[FrameCandidates]:
        n = len(frames)
        with torch.inference_mode():
            pixels = self.uploader.upload(frames)
            letterbox = (
                gpu_preprocess.letterbox_nv12_batch
                if pixel_format == NV12
                else gpu_preprocess.letterbox_batch
            )
            blob, scales = letterbox(pixels, self.input_hw, dtype=self.model.dtype, out=self._blob[:n])
            loc, conf, landmarks = split_outputs(self.model.run_torch(blob))
            found = compact_candidates(loc, conf, landmarks, self.floor, self.top_k)
        return [
            FrameCandidates(index, rows[:, 0:4], rows[:, 4:6], rows[:, 6:16], scales[i])
            for i, (index, rows) in enumerate(found)
        ]

    def close(self) -> None:
        self.uploader.unregister()
