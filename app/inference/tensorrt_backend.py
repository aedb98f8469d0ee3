"""TensorRT 10 implementation of `Model`, with pycuda buffers and a pycuda stream as the original used.

Give it a serialized engine (`.engine`/`.plan`, with the sidecar JSON written by `testbench/create_engine.py`)
or an ONNX file: then an engine is built once (FP16, batch profile 1/opt/max) and cached by (model sha256,
TensorRT version, GPU name, precision, profile) in `trt_cache/` beside the model. An engine built for another
TensorRT version or GPU is refused with a one-line UserError before deserialisation.

Needs NVIDIA's `tensorrt` wheel and `pycuda` on a CUDA machine; neither installs here (PyPI's tensorrt
downloads from NVIDIA at install time), so this module only imports them when a model is loaded and turns
their absence into UserError("TensorRT is not installed: ...").
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np

from app.errors import UserError
from app.inference import engine_cache
from app.inference.batching import run_in_chunks
from app.inference.engine_cache import EngineKey, EngineMetadata, Profile
from app.inference.interface import TensorInfo, require_model_file

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def import_tensorrt() -> tuple[ModuleType, ModuleType]:
    """(tensorrt, pycuda.driver) with a CUDA context made current; UserError when either is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(
            f"TensorRT is not installed: {exc}; install NVIDIA's tensorrt (10.x) and pycuda on a CUDA "
            "machine, or use backend=torch or backend=onnxruntime"
        ) from None
    try:
        import pycuda.autoinit  # noqa: F401  (creates and pushes the context on GPU 0, as the original did)
        import pycuda.driver as cuda
    except ImportError as exc:
        raise UserError(f"TensorRT is not installed: pycuda is missing ({exc}); pip install pycuda") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise UserError(f"TensorRT {trt.__version__} is too old: this backend uses TensorRT 10's tensor API")
    return trt, cuda


def current_target(cuda: ModuleType, trt: ModuleType) -> tuple[str, str]:
    """(TensorRT version, GPU name) of this machine: what engines are keyed and checked by."""
    return str(trt.__version__), str(cuda.Device(0).name())


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    precision: str = "fp16",
    workspace_mib: int = 4096,
    calibrator: object | None = None,
) -> Path:
    """ONNX -> serialized engine plus sidecar metadata (what `trtexec --saveEngine` does, and the JSON)."""
    if precision not in engine_cache.PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of: {', '.join(engine_cache.PRECISIONS)}")
    trt, cuda = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {' '.join(errors.split())[:200]}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if profile.input_name not in names:
        raise UserError(f"{onnx_path} has no input {profile.input_name!r} (inputs: {', '.join(names)})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision in ("fp16", "int8"):  # INT8 layers without an INT8 kernel fall back to FP16, not FP32
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    opt.set_shape(profile.input_name, profile.min_shape, profile.opt_shape, profile.max_shape)
    config.add_optimization_profile(opt)
    if precision == "int8":
        if calibrator is None:
            raise UserError("INT8 needs calibration images; pass a folder of them (--calib DIR)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT could not build an engine from {onnx_path} (see its log above; a larger workspace "
            "often helps)"
        )
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    trt_version, gpu_name = current_target(cuda, trt)
    meta = EngineMetadata(
        model_sha256=engine_cache.file_sha256(Path(onnx_path)),
        model_name=Path(onnx_path).name,
        trt_version=trt_version,
        gpu_name=gpu_name,
        precision=precision,
        profile=profile,
        workspace_mib=int(workspace_mib),
    )
    engine_cache.write_metadata(engine_path, meta)
    log.info("built %s (%s, %s) for %s", engine_path, precision, profile.describe(), gpu_name)
    return engine_path


def _onnx_input(path: Path) -> tuple[str, tuple[int | str | None, ...]]:
    from app.inference.onnx_io import read_io

    (value,), _ = read_io(path)
    return value.name, value.shape


class TensorRTModel:
    """A deserialized engine, one execution context, pinned host and device buffers sized for max batch."""

    def __init__(
        self,
        path: Path,
        det_size: int = 640,
        max_batch: int = 32,
        opt_batch: int = 8,
        precision: str = "fp16",
        cache_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        require_model_file(self.path)
        trt, cuda = import_tensorrt()
        self._cuda = cuda
        trt_version, gpu_name = current_target(cuda, trt)
        if self.path.suffix.lower() in ENGINE_SUFFIXES:
            engine_path = self.path
            meta = engine_cache.read_metadata(engine_path)
            engine_cache.check_compatible(meta, engine_path, trt_version, gpu_name)
        else:  # an ONNX model: build once, then reuse the cached engine
            name, shape = _onnx_input(self.path)
            profile = engine_cache.batch_profile(name, shape, 1, opt_batch, max_batch, (det_size, det_size))
            key = EngineKey(engine_cache.file_sha256(self.path), trt_version, gpu_name, precision, profile)
            engine_path = engine_cache.cached_engine_path(
                cache_dir or self.path.parent / "trt_cache", self.path, key
            )
            if not engine_path.is_file():
                log.warning("building a TensorRT engine for %s (takes minutes, once)", self.path.name)
                build_engine(self.path, engine_path, profile, precision)
        self.engine_path = engine_path

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise UserError(f"TensorRT could not deserialize {engine_path}; rebuild it on this machine")
        self._context = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        io_names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in io_names}
        self._input_names = [n for n in io_names if is_input[n]]
        self._output_names = [n for n in io_names if not is_input[n]]
        if len(self._input_names) != 1:
            raise UserError(f"{engine_path} must have exactly one input, has {self._input_names}")
        self.inputs = [self._info(trt, n) for n in self._input_names]
        self.outputs = [self._info(trt, n) for n in self._output_names]
        in_name = self._input_names[0]
        self._max_shape = tuple(self._engine.get_tensor_profile_shape(in_name, 0)[2])
        self._max_batch = self._max_shape[0]
        # Buffers for the largest profile shape: set once, addresses never change.
        self._context.set_input_shape(in_name, self._max_shape)
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        for name in io_names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            self._device[name] = cuda.mem_alloc(self._host[name].nbytes)
            self._context.set_tensor_address(name, int(self._device[name]))
        log.info("loaded %s (max input %s)", engine_path, self._max_shape)

    def _info(self, trt: ModuleType, name: str) -> TensorInfo:
        shape = tuple(int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name))
        return TensorInfo(name, shape, np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run an (N,C,H,W) batch in chunks of the engine's max batch (padded when its batch is fixed);
        outputs in `outputs` order."""
        if batch.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {batch.shape}")
        if not len(batch):
            raise ValueError("empty batch")
        outputs = run_in_chunks(
            self._run_chunk, batch, fixed=self.inputs[0].fixed_batch, limit=self._max_batch
        )
        assert outputs is not None  # only an empty batch gives none
        return outputs

    def _run_chunk(self, chunk: np.ndarray) -> list[np.ndarray]:
        cuda, stream = self._cuda, self._stream
        in_name = self._input_names[0]
        host_in = self._host[in_name]
        flat = np.ascontiguousarray(chunk, dtype=host_in.dtype).ravel()
        host_in[: flat.size] = flat
        if not self._context.set_input_shape(in_name, tuple(chunk.shape)):
            raise ValueError(
                f"input shape {chunk.shape} is outside the engine's profile (max {self._max_shape})"
            )
        cuda.memcpy_htod_async(self._device[in_name], host_in[: flat.size], stream)
        if not self._context.execute_async_v3(stream_handle=stream.handle):
            raise RuntimeError(f"TensorRT execution failed for input {chunk.shape}")
        shapes = {n: tuple(self._context.get_tensor_shape(n)) for n in self._output_names}
        for name in self._output_names:
            count = int(np.prod(shapes[name]))
            cuda.memcpy_dtoh_async(self._host[name][:count], self._device[name], stream)
        stream.synchronize()
        return [
            self._host[n][: int(np.prod(shapes[n]))].reshape(shapes[n]).copy() for n in self._output_names
        ]
