"""TensorRT engine cache: keys, sidecar metadata and compatibility checks, in plain Python (no TensorRT).

A serialized engine only runs on the TensorRT version and GPU model it was built for. Each engine file
`<name>.engine` gets a sidecar `<name>.engine.json` saying what it was built from and for; engines are
cached under a name derived from (model sha256, TensorRT version, GPU name, precision, profile), so a
changed model, driver stack or card simply builds a new engine, and an engine file handed over by hand is
checked before TensorRT ever sees it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.errors import UserError
from app.file_digest import file_sha256 as file_sha256  # engine keys hash the ONNX file with it

PRECISIONS = ("fp32", "fp16", "int8")
METADATA_SUFFIX = ".json"
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile for the single input: min/opt/max shapes."""

    input_name: str
    min_shape: Shape
    opt_shape: Shape
    max_shape: Shape

    def __post_init__(self) -> None:
        ranks = {len(self.min_shape), len(self.opt_shape), len(self.max_shape)}
        if len(ranks) != 1:
            raise UserError(f"profile shapes for {self.input_name!r} differ in rank: {self.describe()}")
        for lo, mid, hi in zip(self.min_shape, self.opt_shape, self.max_shape, strict=True):
            if not 0 < lo <= mid <= hi:
                raise UserError(
                    f"profile for {self.input_name!r} needs 0 < min <= opt <= max on every axis: "
                    f"{self.describe()}"
                )

    def describe(self) -> str:
        def fmt(shape: Shape) -> str:
            return "x".join(str(d) for d in shape)

        return f"min {fmt(self.min_shape)}, opt {fmt(self.opt_shape)}, max {fmt(self.max_shape)}"


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: Profile

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def file_name(self, model_stem: str) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        return f"{model_stem}.{self.precision}.trt{self.trt_version}.{gpu}.{self.digest()}.engine"


@dataclass(frozen=True)
class EngineMetadata:
    """What the sidecar JSON holds."""

    model_sha256: str
    model_name: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: Profile
    workspace_mib: int
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def key(self) -> EngineKey:
        return EngineKey(self.model_sha256, self.trt_version, self.gpu_name, self.precision, self.profile)


def metadata_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + METADATA_SUFFIX)


def write_metadata(engine_path: Path, meta: EngineMetadata) -> Path:
    path = metadata_path(engine_path)
    path.write_text(json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(engine_path: Path) -> EngineMetadata:
    """The sidecar of `engine_path`; UserError when it is missing or unreadable."""
    path = metadata_path(engine_path)
    if not path.is_file():
        raise UserError(
            f"{engine_path} has no {path.name} beside it, so its TensorRT version and GPU are unknown; "
            "rebuild it with `python -m testbench.create_engine`"
        )
    try:
        raw = json.loads(path.read_text())
        prof = raw.pop("profile")
        profile = Profile(
            prof["input_name"], tuple(prof["min_shape"]), tuple(prof["opt_shape"]), tuple(prof["max_shape"])
        )
        return EngineMetadata(profile=profile, **raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is not valid engine metadata ({type(exc).__name__}: {exc}); rebuild the engine"
        ) from None


def check_compatible(meta: EngineMetadata, engine_path: Path, trt_version: str, gpu_name: str) -> None:
    """UserError (one line) when the engine was built for another TensorRT version or GPU model."""
    problems = []
    if meta.trt_version != trt_version:
        problems.append(f"TensorRT {meta.trt_version} (this machine has {trt_version})")
    if meta.gpu_name != gpu_name:
        problems.append(f"GPU '{meta.gpu_name}' (this machine has '{gpu_name}')")
    if problems:
        raise UserError(
            f"engine {engine_path} was built for {' and '.join(problems)}; rebuild it here with "
            f"`python -m testbench.create_engine` or delete it so it is rebuilt from the ONNX model"
        )


def check_model(meta: EngineMetadata, engine_path: Path, model_sha256: str) -> None:
    """UserError when the engine was built from another ONNX file than the one configured."""
    if meta.model_sha256 != model_sha256:
        raise UserError(
            f"engine {engine_path} was built from another model (sha256 {meta.model_sha256[:12]}, expected "
            f"{model_sha256[:12]}); rebuild it or delete it"
        )


def cached_engine_path(cache_dir: Path, model_path: Path, key: EngineKey) -> Path:
    return Path(cache_dir) / key.file_name(Path(model_path).stem)


def parse_shape_spec(spec: str) -> dict[str, Shape]:
    """trtexec's shape syntax: 'input:1x3x640x640[,other:...]' -> {'input': (1, 3, 640, 640)}."""
    shapes: dict[str, Shape] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, dims = part.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UserError(f"bad shape {part!r}; write NAME:DxDxDxD, e.g. input:1x3x640x640") from None
    return shapes


def parse_workspace(spec: str) -> int:
    """trtexec's --memPoolSize value, 'workspace:4096' or '4096' (MiB; K/M/G suffixes allowed) -> MiB."""
    value = spec.split(":", 1)[1] if ":" in spec else spec
    if spec.count(":") and not spec.lower().startswith("workspace:"):
        raise UserError(f"only the workspace pool is supported: --memPoolSize workspace:N, got {spec!r}")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", value, re.IGNORECASE)
    if not match:
        raise UserError(f"bad workspace size {value!r}; give MiB, e.g. workspace:4096 or workspace:4G")
    number, unit = float(match.group(1)), match.group(2).upper()
    mib = number * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024}[unit]
    if mib < 1:
        raise UserError(f"workspace {value!r} is under 1 MiB")
    return int(mib)


def batch_profile(
    input_name: str,
    onnx_shape: tuple[int | str | None, ...],
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    hw: tuple[int, int] | None = None,
) -> Profile:
    """A profile that varies only the batch axis; dynamic H/W (a detector) take `hw`.

    `onnx_shape` is the model input's declared shape (ints fixed, str/None dynamic).
    """
    if len(onnx_shape) != 4:
        raise UserError(f"input {input_name!r} must be NCHW, got shape {list(onnx_shape)}")
    fixed_batch = onnx_shape[0] if isinstance(onnx_shape[0], int) and onnx_shape[0] > 0 else None
    if fixed_batch is not None and not min_batch == opt_batch == max_batch == fixed_batch:
        raise UserError(
            f"{input_name!r} was exported with a fixed batch of {fixed_batch}; re-export it with a dynamic "
            f"batch axis (testbench/export_onnx.py does) or build with batch {fixed_batch}"
        )
    channels = onnx_shape[1] if isinstance(onnx_shape[1], int) else 3
    spatial = []
    for axis, dim in zip(("height", "width"), onnx_shape[2:], strict=True):
        if isinstance(dim, int) and dim > 0:
            if hw is not None and hw[len(spatial)] != dim:
                raise UserError(f"{input_name!r} has a fixed {axis} of {dim}; drop --size or use {dim}")
            spatial.append(dim)
        elif hw is None:
            raise UserError(f"{input_name!r} has a dynamic {axis}; give the input size (--size)")
        else:
            spatial.append(int(hw[len(spatial)]))
    tail = (channels, *spatial)
    return Profile(input_name, (min_batch, *tail), (opt_batch, *tail), (max_batch, *tail))
