"""Detection stage: model inference only. Letterboxes the frames from the ring and runs RetinaFace in batches.

When the stage falls behind, the runner hands it every frame already queued (up to `max_batch`) and they go
through the model in one call; an idle pipeline never waits to fill a batch. Decoding the raw outputs is the
post-processing stage's job, so this process spends its time in the model.

Two paths:
- CPU (ONNX Runtime, or torch without CUDA): cv2 letterbox per frame into one float32 batch; the outputs of
  the candidate priors (score above `candidate_floor`) go to post-processing as `CandidateDetections`.
- GPU (backend=torch with CUDA; `gpu_detect.TorchDetector`): each frame goes from its ring slot to the GPU
  once, as uint8, through page-locked memory; letterbox, normalisation and the model run there, and only the
  candidate priors (score above `candidate_floor`) come back, as `CandidateDetections`: ~0.1-20 KB a frame
  instead of 1 MB of raw outputs to pickle through the queue.

One detection stage serves every camera: a batch holds frames of several streams (each claimed from its own
camera's ring); frames of different sizes are letterboxed to the same detector input.

Frames come in their ring's pixel format (`FrameRing.format`, read through `FramePixels`): an NV12 ring
(NVDEC with the torch backend) is uploaded as NV12 and converted on the GPU; on the CPU path it is
converted to BGR here, one frame at a time into a reused buffer, before the letterbox.

Each frame is claimed from the ring here: a live frame overwritten while it waited in the queue fails the
claim and is skipped (the ring already counted it as dropped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.errors import UserError
from app.inference.batching import stage_batch
from app.pipeline.cpu_meter import ModelCpu
from app.pipeline.frame_ring import FrameRingHandle, StreamRings
from app.pipeline.messages import CandidateDetections, FrameRef, RawDetections, SourceInfo
from app.pipeline.stage_runner import Capabilities
from app.vision.pixel_format import BGR, FramePixels

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 4  # CPU: batching saves little there; a small cap keeps latency low
GPU_MAX_BATCH = 16  # GPU: a batch of 8-16 runs RetinaFace-R50 at 2x the frames/s of batch 1 (H200)
COMMON_FRAME_HW = (1080, 1920)  # 16:9, most cameras: the GPU path has the graphs of its fitted input ready
# Candidates kept: below any score floor post-processing uses (min(det_threshold, the
# tracker's low threshold 0.1)) unless DET_THRESHOLD is set under it; mnet0.25 on busy frames gives <1100.
CANDIDATE_FLOOR = 0.01
# A live camera's frame is stale (dropped before detection) only when a newer frame of that camera is in the
# same batch *and* it was read longer ago than this. A pipeline a frame behind for a moment (the first
# batches after the start run 30-45 ms where later ones run 6, H200, 16 cameras x 30 fps) catches up without
# losing frames; a camera that stays behind still loses its stale frames, so its backlog, and its latency,
# stay near this bound.
STALE_AFTER_S = 0.1


class DetectStage:
    name = "detect"
    capabilities = Capabilities(batched=True, starts=True)

    def __init__(
        self,
        frames: FrameRingHandle | StreamRings,
        model_path: Path,
        backend: str = "onnxruntime",
        threads: int = 0,
        det_size: int = 640,
        max_batch: int | None = None,
        precision: str | None = None,
        device: str | None = None,
        candidate_floor: float = CANDIDATE_FLOOR,
        streams: tuple[int, ...] | None = None,
        gpu_wait: str = "block",
        compile_graphs: bool = False,
        compile_batches: str = "sparse",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """max_batch: None = DEFAULT_MAX_BATCH on the CPU path, GPU_MAX_BATCH on the GPU path.

        precision, device: the torch backend's (None = its defaults: CUDA when available, fp32 detectors);
        device "cpu" runs the GPU path on the CPU (tests). streams: the cameras this detector serves (None:
        every camera of the run). compile_graphs: TORCH_COMPILE, the GPU path's model through torch.compile;
        compile_batches: TORCH_COMPILE_BATCHES, which batch sizes it compiles.
        clock: capture's clock (its stamps' times), for a live frame's age.
        """
        self.clock = clock
        self.streams = streams
        self.gpu_wait = gpu_wait  # GPU_WAIT: set before the process's first CUDA work
        self.compile_graphs = compile_graphs
        self.compile_batches = compile_batches
        self.frames = frames if isinstance(frames, StreamRings) else StreamRings(frames)
        self.model_path = Path(model_path)
        self.backend = backend
        self.threads = threads
        self.det_size = det_size
        self.batch_limit = None if max_batch is None else max(1, int(max_batch))  # None: the path's default
        self.max_batch = self.batch_limit or DEFAULT_MAX_BATCH  # the runner reads it after setup()
        self.precision = precision
        self.device = device
        self.candidate_floor = float(candidate_floor)
        self.model = None
        self.gpu = None
        self._live: set[int] = set()  # live cameras among those served (set by start)
        self._bgr: dict[tuple[int, ...], np.ndarray] = {}  # CPU path: NV12 frames converted into these
        self.model_cpu = ModelCpu()  # CPU inside the detector calls (the runner logs it against the loop's)

    def setup(self) -> dict[str, object]:
        if self.backend == "torch" and self._torch_device_wanted():
            return self._setup_gpu()
        return self._setup_cpu()

    def _torch_device_wanted(self) -> bool:
        if self.device is not None:
            return True
        try:
            import torch
        except ImportError:
            return False  # load_model below says how to install the torch extra
        return torch.cuda.is_available()

    def _setup_gpu(self) -> dict[str, object]:
        from app.inference.cuda_driver import set_gpu_wait

        if self.device in (None, "cuda"):
            set_gpu_wait(self.gpu_wait)
        # Imported here: torch and the CUDA context live in this process only.
        try:
            from app.stages.gpu_detect import TorchDetector
        except ImportError as exc:
            raise UserError(
                f"backend 'torch' is not available ({exc}); install the 'torch' extra or use "
                "backend=onnxruntime"
            ) from None
        batch = self.batch_limit or GPU_MAX_BATCH
        self.gpu = TorchDetector(
            self.model_path,
            det_size=self.det_size,
            max_batch=batch,
            precision=self.precision,
            device=self.device,
            threads=self.threads,
            floor=self.candidate_floor,
            compile_graphs=self.compile_graphs,
            compile_batches=self.compile_batches,
        )
        self.max_batch = self.gpu.max_batch
        try:
            self._warm_inputs()
            self.input_hw = self.gpu.input_hw
            self.gpu.warm_path(COMMON_FRAME_HW)
        except ValueError as exc:
            message = f"{self.model_path} is not a RetinaFace detector ({exc}); check DETECTOR_MODEL"
            raise UserError(message) from None
        return {
            "input_hw": self.input_hw,
            "max_batch": self.max_batch,
            "device": str(self.gpu.device),
            "precision": self.gpu.precision,
        }

    def _warm_inputs(self) -> None:
        """GPU path: capture the graphs of the input most cameras are fitted to (16:9) now, before the run is
        ready; captured at start instead, the first frames waited seconds for them (live ones dropped).
        Plain, det_size square is warmed too (the input until start); compiled (TORCH_COMPILE), every input
        size costs a compile per bucket, so the detector starts at the 16:9 fit and warms only that."""
        from app.vision.retinaface import fitted_input_hw

        assert self.gpu is not None
        if self.gpu.model.inputs[0].fixed_hw is not None:
            self.gpu.warmup()
            return
        common = fitted_input_hw([COMMON_FRAME_HW], self.det_size)
        if self.compile_graphs:
            self.gpu.refit(common)
            return
        self.gpu.warmup()
        if common != tuple(self.gpu.input_hw):
            self.gpu.prepare(common)

    def _setup_cpu(self) -> dict[str, object]:
        from app.inference.backend import load_model
        from app.vision.retinaface import RetinaFacePreprocessor, split_outputs

        self.model = load_model(self.model_path, self.backend, self.threads)
        self.preprocess = RetinaFacePreprocessor.for_model(self.model, self.det_size)
        self.input_hw = self.preprocess.input_hw
        self._split = split_outputs
        self.max_batch = stage_batch(self.batch_limit or DEFAULT_MAX_BATCH, self.model.inputs[0].fixed_batch)
        h, w = self.input_hw
        self._buffer = np.zeros((self.max_batch, 3, h, w), np.float32)
        # One warm-up call: the first run of a session is slow, and a wrong model fails here, at start.
        try:
            self._split(self.model.run(self._buffer[:1]))
        except ValueError as exc:
            message = f"{self.model_path} is not a RetinaFace detector ({exc}); check DETECTOR_MODEL"
            raise UserError(message) from None
        return {"input_hw": (h, w), "max_batch": self.max_batch}

    def start(self, sources: dict) -> None:
        """Live cameras are noted (their stale frames are dropped before detection); the detector input is
        fitted to the cameras' frames; GPU path: every camera's ring is page-locked now (~50 ms each), not
        when its first frame comes."""
        served = [s for s in sources if self.streams is None or s in self.streams]
        self._live = {s for s in served if isinstance(sources[s], SourceInfo) and sources[s].live}
        self._fit_input(served)
        if self.gpu is None:
            return
        for stream in served:
            ring = self.frames.ring(stream)
            self.gpu.register_ring(ring.frame(0), ring.slots)

    def _fit_input(self, streams: list[int]) -> None:
        """A model with a free input size gets the smallest input holding every camera's frame
        (`fitted_input_hw`: 640x384 for 16:9 at 640), not det_size square: 40 % fewer pixels through the
        model for 16:9 cameras."""
        from app.vision.retinaface import RetinaFacePreprocessor, fitted_input_hw

        model = self.gpu.model if self.gpu is not None else self.model
        if model is None or model.inputs[0].fixed_hw is not None or not streams:
            return
        hw = fitted_input_hw([self.frames.ring(s).frame_hw for s in streams], self.det_size)
        if hw == tuple(self.input_hw):
            return
        self.input_hw = hw
        if self.gpu is not None:
            self.gpu.refit(hw)  # CUDA graphs for the new size, captured now
        else:
            self.preprocess = RetinaFacePreprocessor(hw)
            self._buffer = np.zeros((self.max_batch, 3, *hw), np.float32)
            self._split(self.model.run(self._buffer[:1]))  # a first run at a new size is slow
        log.info("detector input %dx%d for frames of %s", hw[1], hw[0],
                 sorted({self.frames.ring(s).frame_hw for s in streams}))  # fmt: skip

    def _newest_live(self, msgs: list[FrameRef]) -> list[FrameRef]:
        """A live camera's frame with a newer one of that camera behind it in the batch, read more than
        `STALE_AFTER_S` ago, is stale: dropped here (counted by its ring), before it costs a detection."""
        newest: dict[int, int] = {}
        for m in msgs:
            if m.meta.stream in self._live:
                newest[m.meta.stream] = max(newest.get(m.meta.stream, 0), m.meta.seq)
        if not newest:
            return msgs
        now = self.clock()
        kept = []
        for m in msgs:
            read = m.meta.stamps[0].end if m.meta.stamps else -np.inf  # unstamped: as old as can be
            stale = m.meta.stream in newest and m.meta.seq != newest[m.meta.stream]
            if stale and now - read > STALE_AFTER_S:
                self.frames.ring(m.meta.stream).drop(m.meta.slot, m.meta.seq)
            else:
                kept.append(m)
        return kept

    def process(self, msg: FrameRef) -> list[RawDetections]:
        return self.process_batch([msg])

    def process_batch(self, msgs: list[FrameRef]) -> list[RawDetections]:
        rings = self.frames
        if self._live and len(msgs) > 1:
            msgs = self._newest_live(msgs)
        frames = [m for m in msgs if rings.ring(m.meta.stream).claim(m.meta.slot, m.meta.seq)]
        if not frames:
            return []
        if self.gpu is not None:
            return self._detect_gpu(frames)
        n = len(frames)
        pictures = (self._bgr_of(self._pixels(m)) for m in frames)
        scales = [self.preprocess(picture, out=self._buffer[i])[1] for i, picture in enumerate(pictures)]
        with self.model_cpu.measure():
            raw = self.model.run(self._buffer[:n])
        loc, conf, landmarks = self._split(raw)
        hw, priors, floor = self.input_hw, loc.shape[1], self.candidate_floor
        out: list[RawDetections] = []
        for i, m in enumerate(frames):
            # Only candidate priors travel, as on the GPU path: pickling all 16800 priors (1 MB a frame at
            # 640) cost ~2 ms a message and could leave a half-written message behind at shutdown.
            index = np.flatnonzero(conf[i, :, 1] > floor)
            out.append(
                CandidateDetections(
                    m.meta,
                    loc[i, index],
                    conf[i, index],
                    landmarks[i, index],
                    scales[i],
                    hw,
                    index,
                    priors,
                    floor,
                )
            )
        return out

    def _pixels(self, msg: FrameRef) -> FramePixels:
        ring = self.frames.ring(msg.meta.stream)
        return FramePixels(ring.frame(msg.meta.slot), ring.format)

    def _bgr_of(self, pixels: FramePixels) -> np.ndarray:
        """The frame as BGR for the CPU letterbox: the slot itself, or an NV12 slot converted into a buffer
        kept per frame size (each frame is letterboxed before the next is converted)."""
        shape = pixels.shape
        if pixels.format != BGR and shape not in self._bgr:
            self._bgr[shape] = np.empty(shape, np.uint8)
        return pixels.bgr(out=self._bgr.get(shape))

    def _detect_gpu(self, frames: list[FrameRef]) -> list[RawDetections]:
        images, formats = [], []
        for m in frames:
            ring = self.frames.ring(m.meta.stream)
            if not self.gpu.uploader.registered(ring.frame(0)):
                self.gpu.register_ring(ring.frame(0), ring.slots)  # once a ring: later frames DMA from it
            images.append(ring.frame(m.meta.slot))  # as stored (NV12 is converted on the GPU)
            formats.append(ring.format)
        with self.model_cpu.measure():  # upload, conversion, letterbox, model and candidate compaction
            found = self.gpu.detect(images, formats)
        priors = self._priors()
        return [
            CandidateDetections(
                m.meta,
                c.loc,
                c.conf,
                c.landmarks,
                c.scale,
                self.input_hw,
                c.prior_index,
                priors,
                self.gpu.floor,
            )
            for m, c in zip(frames, found, strict=True)
        ]

    def _priors(self) -> int:
        from app.vision.retinaface import prior_boxes

        return int(prior_boxes(tuple(self.input_hw)).shape[0])

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()  # before the ring's mapping goes: it is page-locked in this process
            self.gpu = None
        self.model = None
        self.frames.close()
