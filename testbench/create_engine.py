"""Build a TensorRT engine from an ONNX model, like trtexec, plus the sidecar JSON the backend checks.

    python -m testbench.create_engine --onnx checkpoints/retinaface_mnet025.onnx --fp16 \\
        --minShapes input:1x3x640x640 --optShapes input:8x3x640x640 --maxShapes input:32x3x640x640 \\
        --memPoolSize workspace:4096 --saveEngine checkpoints/trt_cache/det.engine
    python -m testbench.create_engine --onnx checkpoints/dlib_resnet.onnx --fp16 --batch 1,64,256
    python -m testbench.create_engine --onnx det.onnx --int8 --calib data/calib --batch 1,8,32 --size 640

is what `trtexec --onnx=.. --saveEngine=.. --fp16 --minShapes/--optShapes/--maxShapes
--memPoolSize=workspace:..` does. `--batch MIN,OPT,MAX` (with `--size` for a detector's dynamic H/W) is a
shorthand for the three shape flags. Without --saveEngine the engine goes to the cache the TensorRT backend
reads (trt_cache/ beside the model). INT8 calibrates with IInt8EntropyCalibrator2 on images preprocessed as
the pipeline does (detector: letterbox; embedder: the images are taken as aligned chips, resized and
normalised per the embedder spec). Needs TensorRT 10 and pycuda; everything before the build runs without.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from app.cli_exit import run_cli
from app.errors import UserError
from app.inference import engine_cache
from app.inference.engine_cache import Profile

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m testbench.create_engine", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="the ONNX model")
    p.add_argument("--saveEngine", dest="save_engine", type=Path, help="engine path (default: the cache)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    p.add_argument("--int8", action="store_true", help="allow INT8 kernels (needs --calib)")
    p.add_argument("--calib", type=Path, help="folder of calibration images for --int8")
    p.add_argument("--calibCache", dest="calib_cache", type=Path, help="calibration cache file to read/write")
    p.add_argument("--calibImages", dest="calib_images", type=int, default=512, help="at most this many")
    p.add_argument("--minShapes", dest="min_shapes", help="trtexec syntax, e.g. input:1x3x640x640")
    p.add_argument("--optShapes", dest="opt_shapes")
    p.add_argument("--maxShapes", dest="max_shapes")
    p.add_argument("--batch", help="MIN,OPT,MAX batch sizes instead of the three shape flags")
    p.add_argument("--size", type=int, help="H=W for a model with dynamic spatial axes (with --batch)")
    p.add_argument("--memPoolSize", dest="mem_pool", default="workspace:4096", help="workspace:MiB")
    return p.parse_args(argv)


def precision_of(args: argparse.Namespace) -> str:
    if args.int8:
        if args.calib is None and args.calib_cache is None:
            raise UserError(
                "--int8 needs calibration images (--calib DIR) or a calibration cache (--calibCache)"
            )
        return "int8"
    return "fp16" if args.fp16 else "fp32"


def parse_batch(spec: str) -> tuple[int, int, int]:
    try:
        lo, mid, hi = (int(v) for v in spec.split(","))
    except ValueError:
        raise UserError(f"--batch wants MIN,OPT,MAX, e.g. 1,8,32; got {spec!r}") from None
    return lo, mid, hi


def resolve_profile(
    args: argparse.Namespace, input_name: str, onnx_shape: tuple[int | str | None, ...]
) -> Profile:
    """The optimisation profile from either the trtexec shape flags or --batch/--size."""
    shape_flags = (args.min_shapes, args.opt_shapes, args.max_shapes)
    if any(shape_flags):
        if not all(shape_flags):
            raise UserError("give all three of --minShapes, --optShapes and --maxShapes (or use --batch)")
        if args.batch:
            raise UserError("use either --batch or the --minShapes/--optShapes/--maxShapes flags, not both")
        shapes = [engine_cache.parse_shape_spec(s) for s in shape_flags]
        for flag, parsed in zip(("--minShapes", "--optShapes", "--maxShapes"), shapes, strict=True):
            if set(parsed) != {input_name}:
                raise UserError(f"{flag} must name the model input {input_name!r}, got {', '.join(parsed)}")
        return Profile(input_name, shapes[0][input_name], shapes[1][input_name], shapes[2][input_name])
    lo, mid, hi = parse_batch(args.batch or "1,8,32")
    hw = (args.size, args.size) if args.size else None
    return engine_cache.batch_profile(input_name, onnx_shape, lo, mid, hi, hw)


def onnx_input(path: Path) -> tuple[str, tuple[int | str | None, ...]]:
    import onnx

    if not path.is_file():
        raise UserError(f"model file {path} does not exist; check the path")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise UserError(f"{path} is not a loadable ONNX model ({' '.join(str(exc).split())[:120]})") from None
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"{path} must have exactly one input, has {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, tuple(d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in dims)


def calibration_images(folder: Path, limit: int) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"calibration folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def calibration_batches(
    paths: list[Path], shape: tuple[int, ...], onnx_path: Path, detector: bool
) -> Iterator[np.ndarray]:
    """Batches of `shape` (the profile's opt shape) preprocessed as in the pipeline; drops a short tail."""
    from app.vision.image_io import read_image

    n, _, h, w = shape
    if detector:
        from app.vision.retinaface import letterbox

        def prepare(image: np.ndarray) -> np.ndarray:
            return letterbox(image, (h, w))[0]
    else:
        import cv2

        from app.inference.spec import embedder_spec_for

        spec = embedder_spec_for(onnx_path)

        def prepare(image: np.ndarray) -> np.ndarray:
            chip = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
            if spec.channel_order == "RGB":
                chip = chip[..., ::-1]
            return ((chip - spec.mean) / spec.std).transpose(2, 0, 1)

    batch = np.empty(shape, np.float32)
    filled = 0
    for path in paths:
        batch[filled] = prepare(read_image(path))
        filled += 1
        if filled == n:
            yield batch.copy()
            filled = 0


def is_detector(onnx_shape: tuple[int | str | None, ...], num_outputs: int) -> bool:
    """RetinaFace-style models have dynamic H/W or three outputs; embedders a fixed chip and one output."""
    return not all(isinstance(d, int) for d in onnx_shape[2:]) or num_outputs == 3


def make_calibrator(batches: Iterator[np.ndarray], shape: tuple[int, ...], cache: Path | None) -> object:
    """An IInt8EntropyCalibrator2 feeding `batches` through one pycuda device buffer."""
    from app.inference.tensorrt_backend import import_tensorrt

    trt, cuda = import_tensorrt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._device = cuda.mem_alloc(int(np.prod(shape)) * 4)

        def get_batch_size(self) -> int:
            return int(shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            cuda.memcpy_htod(self._device, np.ascontiguousarray(batch, np.float32))
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    precision = precision_of(args)
    workspace = engine_cache.parse_workspace(args.mem_pool)
    input_name, onnx_shape = onnx_input(args.onnx)
    profile = resolve_profile(args, input_name, onnx_shape)
    calibrator = None
    if precision == "int8":
        import onnx

        outputs = len(onnx.load(str(args.onnx), load_external_data=False).graph.output)
        paths = calibration_images(args.calib, args.calib_images) if args.calib else []
        batches = calibration_batches(paths, profile.opt_shape, args.onnx, is_detector(onnx_shape, outputs))
        calibrator = make_calibrator(batches, profile.opt_shape, args.calib_cache)

    from app.inference import tensorrt_backend

    save = args.save_engine
    if save is None:
        trt, cuda = tensorrt_backend.import_tensorrt()
        version, gpu = tensorrt_backend.current_target(cuda, trt)
        key = engine_cache.EngineKey(engine_cache.file_sha256(args.onnx), version, gpu, precision, profile)
        save = engine_cache.cached_engine_path(args.onnx.parent / "trt_cache", args.onnx, key)
    path = tensorrt_backend.build_engine(args.onnx, save, profile, precision, workspace, calibrator)
    print(f"wrote {path} ({precision}, {profile.describe()}, workspace {workspace} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
