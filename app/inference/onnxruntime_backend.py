"""ONNX Runtime `Model`: CPU by default; CUDA (and TensorRT on request) when onnxruntime-gpu has them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.errors import UserError, one_line
from app.inference.batching import run_in_chunks
from app.inference.interface import TensorInfo, require_model_file, require_one_image_input, tensor_dim

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _tensor_info(node: ort.NodeArg) -> TensorInfo:
    shape = tuple(tensor_dim(d) for d in node.shape)
    return TensorInfo(name=node.name, shape=shape, dtype=_ORT_DTYPES.get(node.type, node.type))


def choose_providers(require_tensorrt: bool = False, trt_cache_dir: Path | None = None) -> list:
    """Execution providers in priority order.

    CUDA is used whenever onnxruntime-gpu exposes it. TensorRT only when asked (backend=tensorrt): building
    its engines takes minutes on first load, which would surprise a plain `onnxruntime` user.
    """
    available = set(ort.get_available_providers())
    providers: list = []
    if require_tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise UserError(
                "backend 'tensorrt' needs onnxruntime-gpu built with TensorRT (available providers: "
                f"{', '.join(sorted(available))}); install it or use backend=onnxruntime"
            )
        options = {"trt_fp16_enable": True}
        if trt_cache_dir is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
        providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeModel:
    """One ONNX Runtime session with a single NCHW input."""

    def __init__(self, path: Path, threads: int = 0, require_tensorrt: bool = False) -> None:
        self.path = Path(path)
        require_model_file(self.path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = max(0, int(threads))  # 0 = one per physical core
        options.inter_op_num_threads = 1  # sequential graph: inter-op threads would only idle
        options.log_severity_level = 3  # errors only; ORT's warnings are noise for users
        providers = choose_providers(require_tensorrt, trt_cache_dir=self.path.parent / "trt_cache")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises several pybind types (InvalidProtobuf, Fail, InvalidGraph...)
            raise UserError(
                f"{self.path} is not a loadable ONNX model ({one_line(exc, limit=160)}); "
                "re-export or re-download it"
            ) from None
        self.inputs = [_tensor_info(n) for n in self._session.get_inputs()]
        self.outputs = [_tensor_info(n) for n in self._session.get_outputs()]
        require_one_image_input(self.path, self.inputs)
        self.providers: list[str] = self._session.get_providers()
        self._input_name = self.inputs[0].name
        self._input_dtype = np.dtype(self.inputs[0].dtype)
        self._output_names = [o.name for o in self.outputs]
        self._fixed_batch = self.inputs[0].fixed_batch
        log.info("loaded %s on %s (inputs %s)", self.path, self.providers, self.inputs)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run an (N,C,H,W) batch; models exported with a fixed batch size are fed in chunks of that size."""
        if batch.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {batch.shape}")
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        outputs = run_in_chunks(self._run_once, batch, fixed=self._fixed_batch)
        if outputs is None:  # an empty batch for a fixed-batch model
            return [
                np.zeros((0, *(d if isinstance(d, int) else 0 for d in o.shape[1:])), np.float32)
                for o in self.outputs
            ]
        return outputs

    def _run_once(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self._output_names, {self._input_name: batch})
