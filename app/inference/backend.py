"""The inference interface every stage codes against, and `load_model` which picks an implementation.

A `Model` takes one NCHW batch and returns its outputs in the model's declared order. Stages never import a
runtime directly, so the same code runs on ONNX Runtime CPU, CUDA or TensorRT providers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from app.errors import UserError

BACKENDS = ("onnxruntime", "torch", "tensorrt")


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output; `shape` has ints for fixed axes, a name (str) or None for dynamic ones."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """(height, width) when both spatial axes of an NCHW tensor are fixed, else None."""
        if len(self.shape) != 4:
            return None
        h, w = self.shape[2], self.shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the model was exported with a fixed one, else None."""
        b = self.shape[0] if self.shape else None
        return b if isinstance(b, int) and b > 0 else None


@runtime_checkable
class Model(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one NCHW batch; outputs come back in the order of `outputs`."""
        ...


def load_model(path: Path, backend: str = "onnxruntime", threads: int = 0) -> Model:
    """Load an ONNX model for `backend`; `threads` = intra-op threads (0 = the runtime's choice).

    Raises UserError (one line naming the file and the fix) for a missing file, a file that is not ONNX, a
    model whose input is not one NCHW tensor, or a backend that this install cannot provide.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise UserError(f"unknown inference backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    if not path.is_file():
        hint = " (run `python -m app.models fetch`)" if path.parent.name == "checkpoints" else ""
        raise UserError(f"model file {path} does not exist; check the path{hint}")
    if backend == "tensorrt" and path.suffix.lower() in (".engine", ".plan", ".trt"):
        # Engine files run on TensorRT's own API (as the original did); ONNX files with backend=tensorrt go
        # through ONNX Runtime's TensorRT provider, which builds and caches the engine itself.
        from app.inference.tensorrt_backend import TensorRTModel

        return TensorRTModel(path)
    if backend in ("onnxruntime", "tensorrt"):
        from app.inference.onnxruntime_backend import OnnxRuntimeModel

        return OnnxRuntimeModel(path, threads=threads, require_tensorrt=backend == "tensorrt")
    # The torch backend is optional (extra "torch"); its own module, so torch is never imported here.
    try:
        module = importlib.import_module("app.inference.torch_backend")
    except ImportError as exc:
        raise UserError(
            f"backend 'torch' is not available ({exc}); install the 'torch' extra or use backend=onnxruntime"
        ) from None
    return module.TorchModel(path, threads=threads)
