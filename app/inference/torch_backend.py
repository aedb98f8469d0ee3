"""PyTorch implementation of `Model`: the same ONNX files, converted by onnx2torch, on CUDA or the CPU.

On CUDA the model runs channels-last (fp16 for embedders, see `precision`), and each (batch bucket, H, W)
gets a CUDA graph captured on first use: a batch of n rows is copied into the smallest bucket >= n, the
graph is replayed and the first n rows of each output are returned. The graphs replay a copy of the
converted graph specialised to that shape (`torch_convert.specialise`), which makes capture possible.
On CPU it runs fp32 without graphs, so tests can compare it with ONNX Runtime on any machine.

`run_torch` takes and returns device tensors, so GPU preprocessing (`vision.gpu_preprocess`) feeds the model
without a round trip through host memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import fx

from app.errors import UserError
from app.inference import torch_convert
from app.inference.batching import ArrayOps, run_in_chunks
from app.inference.interface import TensorInfo, require_model_file, require_one_image_input
from app.inference.onnx_io import graph_io

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# torch.compile's mode for TORCH_COMPILE: "default" fuses the elementwise work around the convolutions
# (the CUDA graphs are ours, captured per bucket); "max-autotune" searches kernels for minutes more a shape.
COMPILE_MODE = "default"
# Buckets of a compiled model: each is a compile of its own (~20 s for RetinaFace-R50 on the H200 host), so
# fewer than DEFAULT_BUCKETS; a batch of 2-3 runs padded to 4, one of 5-15 to 16.
COMPILE_BUCKETS = (1, 4, 16, 32, 64, 128, 256)
# TORCH_COMPILE_BATCHES: which bucket set a compiled detector captures.
COMPILE_BATCHES = {"sparse": COMPILE_BUCKETS, "every": DEFAULT_BUCKETS}
PRECISIONS = ("auto", "fp32", "fp16")


def pick_bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n rows, or the largest bucket (the caller splits the batch)."""
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


class _GraphRunner:
    """One CUDA graph for one input shape: static input buffer, captured forward, static outputs."""

    def __init__(
        self, module: Callable, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool, pool: object
    ) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # Random, not zeros: capture must not depend on values, and zeros would hide unwritten rows.
        self.static_in = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: cuDNN picks algorithms, lazy inits run
            for _ in range(2):
                module(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out = [o.float() for o in _as_list(module(self.static_in))]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return [o[:n] for o in self.static_out]


def _zero_rows(like: torch.Tensor, rows: int) -> torch.Tensor:
    return like.new_zeros((rows, *like.shape[1:]))


TORCH_OPS: ArrayOps[torch.Tensor] = ArrayOps(torch.cat, _zero_rows)


def _as_list(out: object) -> list[torch.Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]  # type: ignore[list-item]


class TorchModel:
    """An ONNX model run by PyTorch. Same interface as the ONNX Runtime model, plus `run_torch`.

    device: "cuda", "cpu" or None (CUDA when available).
    precision: "fp16", "fp32" or "auto" (default): on CUDA, fp32 (TF32 convs) for models with dynamic H/W --
    the detectors, whose fp16 boxes moved by up to 10 px on a 270 px face on the H200 while fp32 stayed
    within 0.03 px -- and fp16 for fixed-size models (embedders: cosine 0.999999 to ONNX Runtime); on the
    CPU always fp32.
    cuda_graphs: capture per batch bucket (default on for CUDA).
    compile_mode: a `torch.compile` mode applied to each specialised graph before capture (None = none).
    """

    def __init__(
        self,
        path: Path,
        threads: int = 0,
        device: str | None = None,
        precision: str | None = None,
        cuda_graphs: bool | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        channels_last: bool = True,
        compile_mode: str | None = None,
    ) -> None:
        self.path = Path(path)
        require_model_file(self.path)
        want_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise UserError(
                "device 'cuda' asked for but torch sees no CUDA GPU; use device=cpu or a CUDA torch"
            )
        self.device = torch.device("cuda" if want_cuda else "cpu")
        precision = precision or "auto"
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
        self.cuda_graphs = want_cuda if cuda_graphs is None else bool(cuda_graphs and want_cuda)
        self.channels_last = channels_last and want_cuda  # on the CPU, NCHW convs are the faster path here
        self.buckets = tuple(sorted(int(b) for b in buckets))
        self.compile_mode = compile_mode
        if threads > 0 and not want_cuda:
            torch.set_num_threads(int(threads))

        proto = torch_convert.load_onnx(self.path)
        self.inputs, self.outputs = graph_io(proto.graph)
        self.outputs = [TensorInfo(o.name, o.shape, "float32") for o in self.outputs]  # always float32 out
        require_one_image_input(self.path, self.inputs)
        self._fixed_batch = self.inputs[0].fixed_batch
        if precision == "auto":
            precision = "fp16" if want_cuda and self.inputs[0].fixed_hw is not None else "fp32"
        if precision == "fp16" and not want_cuda:
            raise UserError("fp16 needs a CUDA device; use precision=fp32 on the CPU")
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32

        module = torch_convert.convert(proto).eval()
        module = module.to(self.device, dtype=self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self._specialised: dict[tuple[int, ...], Callable] = {}
        self._graphs: dict[tuple[int, ...], _GraphRunner] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._staging: torch.Tensor | None = None  # page-locked bytes for run_images, grown as needed
        self._norms: dict[tuple[bytes, bytes], tuple[torch.Tensor, torch.Tensor]] = {}
        log.info(
            "loaded %s with torch on %s (%s, graphs=%s, compile=%s)",
            self.path,
            self.device,
            self.precision,
            self.cuda_graphs,
            compile_mode,
        )

    # -- public API ---------------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run an (N,C,H,W) numpy batch; outputs are float32 numpy arrays in the order of `outputs`."""
        if batch.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {batch.shape}")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            outs = self._forward(x)
            return [o.cpu().numpy() for o in outs]

    def run_images(self, images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
        """Run (N,H,W,C) uint8 images, normalised as (x - mean) / std per channel on the model's device;
        outputs as `run` gives them.

        What crosses to a GPU is the bytes (a quarter of the float input) through one reused page-locked
        buffer, and the host does no float work: in the embedding worker, the host-side normalisation and
        a page-locked copy per call were most of its own CPU (H200 host, 16 cameras)."""
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected (N,H,W,C) uint8 images, got {images.dtype} {images.shape}")
        with torch.inference_mode():
            x = self._upload_bytes(images)
            scale = self._normaliser(mean, std)
            # NHWC bytes seen as NCHW: the channels-last layout the convolutions want, no copy.
            x = (x.permute(0, 3, 1, 2).float() - scale[0]) / scale[1]
            return [o.cpu().numpy() for o in self._forward(x)]

    def _upload_bytes(self, images: np.ndarray) -> torch.Tensor:
        src = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type != "cuda":
            return src
        if self._staging is None or self._staging.numel() < images.size:
            self._staging = torch.empty(
                max(images.size, 2 * self._staging_size()), dtype=torch.uint8
            ).pin_memory()
        # The last call's copy out of this buffer is done: every call ends reading its outputs back.
        staged = self._staging[: images.size].view(images.shape)
        staged.copy_(src)
        return staged.to(self.device, non_blocking=True)

    def _staging_size(self) -> int:
        return 0 if self._staging is None else int(self._staging.numel())

    def _normaliser(self, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        key = (np.asarray(mean, np.float32).tobytes(), np.asarray(std, np.float32).tobytes())
        found = self._norms.get(key)
        if found is None:
            m, s = (
                torch.tensor(np.asarray(v, np.float32), device=self.device).view(1, -1, 1, 1)
                for v in (mean, std)
            )
            found = self._norms[key] = (m, s)
        return found

    def run_torch(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Run an (N,C,H,W) tensor (any float dtype, any device); float32 tensors on the model's device.

        The results are fresh tensors (not views of graph buffers), so they stay valid after the next call.
        """
        if batch.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(batch.shape)}")
        with torch.inference_mode():
            return self._forward(batch.to(self.device))

    def warmup(self, batch_sizes: Sequence[int], hw: tuple[int, int]) -> None:
        """Specialise (and capture) ahead of time for these batch sizes at spatial size `hw`."""
        c = self.inputs[0].shape[1] if isinstance(self.inputs[0].shape[1], int) else 3
        for n in batch_sizes:
            self.run_torch(torch.zeros((n, c, *hw), dtype=self.dtype, device=self.device))

    # -- internals ------------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[0] == 0:  # one dummy row gives the output shapes, which the ONNX file may leave symbolic
            return [o[:0] for o in self._forward(torch.zeros((1, *x.shape[1:]), device=x.device))]
        # Fixed-batch chunks arrive padded; dynamic ones hold at most the largest bucket.
        outs = run_in_chunks(
            self._forward_chunk, x, fixed=self._fixed_batch, limit=self.buckets[-1], ops=TORCH_OPS
        )
        assert outs is not None  # only an empty batch gives none
        return outs

    def _forward_chunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = x.shape[0]
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._fixed_batch:
            rows = self._fixed_batch
        elif self.cuda_graphs:
            rows = pick_bucket(n, self.buckets)
        else:
            rows = n
        key = (rows, *x.shape[1:])
        if self.cuda_graphs:
            runner = self._graphs.get(key)
            if runner is None:
                runner = _GraphRunner(self._module_for(key), key, self.dtype, self.channels_last, self._pool)
                self._graphs[key] = runner
            # Copied out of the graph's buffers: the next chunk's replay overwrites them.
            return [o.clone() for o in runner(x)]
        return [o.float() for o in _as_list(self._module_for(key)(x))]

    def _module_for(self, shape: tuple[int, ...]) -> Callable:
        module = self._specialised.get(shape)
        if module is None:
            example = torch.zeros(shape, dtype=self.dtype, device=self.device)
            module = specialised = torch_convert.specialise(self._module, example)
            if self.compile_mode is not None:
                module = torch.compile(specialised, mode=self.compile_mode, dynamic=False)
            self._specialised[shape] = module
            log.debug("specialised %s for input %s", self.path.name, shape)
        return module

    @property
    def graph_module(self) -> fx.GraphModule:
        """The converted (unspecialised) fx graph: any input shape, eager only."""
        return self._module
