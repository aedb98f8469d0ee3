"""`load_model`: picks the backend that implements `app.inference.interface.Model` for a file."""

from __future__ import annotations

import importlib
from pathlib import Path

from app.errors import UserError
from app.inference.interface import BACKENDS, Model, TensorInfo, require_model_file

__all__ = ["BACKENDS", "Model", "TensorInfo", "load_model"]


def load_model(path: Path, backend: str = "onnxruntime", threads: int = 0) -> Model:
    """Load an ONNX model for `backend`; `threads` = intra-op threads (0 = the runtime's choice).

    Raises UserError (one line naming the file and the fix) for a missing file, a file that is not ONNX, a
    model whose input is not one NCHW tensor, or a backend that this install cannot provide.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise UserError(f"unknown inference backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    require_model_file(path)
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
