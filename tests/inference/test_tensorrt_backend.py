"""TensorRT backend: everything that runs without TensorRT (cache keys, sidecar metadata, compatibility
checks, profile shapes) and the clear error where TensorRT is missing (it cannot be installed here)."""

import importlib.util
import json
from pathlib import Path

import pytest

from app.errors import UserError
from app.inference import engine_cache
from app.inference.engine_cache import EngineKey, EngineMetadata, Profile

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"
DET_PROFILE = Profile("input", (1, 3, 640, 640), (8, 3, 640, 640), (32, 3, 640, 640))


def _meta(**changes) -> EngineMetadata:
    fields = dict(
        model_sha256="ab" * 32,
        model_name="retinaface_mnet025.onnx",
        trt_version="10.3.0",
        gpu_name="NVIDIA H200",
        precision="fp16",
        profile=DET_PROFILE,
        workspace_mib=4096,
    )
    fields.update(changes)
    return EngineMetadata(**fields)


def test_metadata_round_trips_through_the_sidecar(tmp_path):
    engine = tmp_path / "det.engine"
    meta = _meta()
    sidecar = engine_cache.write_metadata(engine, meta)
    assert sidecar == tmp_path / "det.engine.json"
    assert json.loads(sidecar.read_text())["gpu_name"] == "NVIDIA H200"
    assert engine_cache.read_metadata(engine) == meta


def test_missing_or_corrupt_sidecar_is_a_user_error(tmp_path):
    engine = tmp_path / "det.engine"
    with pytest.raises(UserError, match="has no det.engine.json"):
        engine_cache.read_metadata(engine)
    engine_cache.metadata_path(engine).write_text("{not json")
    with pytest.raises(UserError, match="not valid engine metadata"):
        engine_cache.read_metadata(engine)
    engine_cache.metadata_path(engine).write_text(json.dumps({"model_sha256": "x"}))
    with pytest.raises(UserError, match="not valid engine metadata"):
        engine_cache.read_metadata(engine)


def test_engine_for_another_gpu_or_tensorrt_is_refused_in_one_line():
    meta = _meta()
    engine_cache.check_compatible(meta, Path("det.engine"), "10.3.0", "NVIDIA H200")  # same: fine
    with pytest.raises(UserError) as gpu:
        engine_cache.check_compatible(meta, Path("det.engine"), "10.3.0", "NVIDIA A100-SXM4-80GB")
    message = str(gpu.value)
    assert "\n" not in message
    assert "GPU 'NVIDIA H200' (this machine has 'NVIDIA A100-SXM4-80GB')" in message
    assert "create_engine" in message
    with pytest.raises(UserError, match=r"TensorRT 10.3.0 \(this machine has 10.8.0\) and GPU"):
        engine_cache.check_compatible(meta, Path("det.engine"), "10.8.0", "NVIDIA L4")
    with pytest.raises(UserError, match="built from another model"):
        engine_cache.check_model(meta, Path("det.engine"), "cd" * 32)


def test_cache_key_changes_with_everything_that_makes_an_engine_invalid(tmp_path):
    key = EngineKey("ab" * 32, "10.3.0", "NVIDIA H200", "fp16", DET_PROFILE)
    path = engine_cache.cached_engine_path(tmp_path, DETECTOR, key)
    assert path.parent == tmp_path
    assert path.name.startswith("retinaface_mnet025.fp16.trt10.3.0.nvidia-h200.") and path.suffix == ".engine"
    assert engine_cache.cached_engine_path(tmp_path, DETECTOR, key) == path  # stable
    variants = [
        EngineKey("cd" * 32, "10.3.0", "NVIDIA H200", "fp16", DET_PROFILE),
        EngineKey("ab" * 32, "10.4.0", "NVIDIA H200", "fp16", DET_PROFILE),
        EngineKey("ab" * 32, "10.3.0", "NVIDIA H100", "fp16", DET_PROFILE),
        EngineKey("ab" * 32, "10.3.0", "NVIDIA H200", "int8", DET_PROFILE),
        EngineKey("ab" * 32, "10.3.0", "NVIDIA H200", "fp16", Profile("input", *[(1, 3, 640, 640)] * 3)),
    ]
    names = {engine_cache.cached_engine_path(tmp_path, DETECTOR, k).name for k in variants}
    assert len(names) == len(variants) and path.name not in names
    assert _meta().key == key


def test_file_sha256_of_a_model():
    digest = engine_cache.file_sha256(DETECTOR)
    assert len(digest) == 64 and digest == engine_cache.file_sha256(DETECTOR)
    assert digest != engine_cache.file_sha256(EMBEDDER)


def test_batch_profiles_for_detector_and_embedder():
    det = engine_cache.batch_profile("input", ("batch_size", 3, "height", "width"), 1, 8, 32, (640, 640))
    assert det == DET_PROFILE
    assert det.describe() == "min 1x3x640x640, opt 8x3x640x640, max 32x3x640x640"
    emb = engine_cache.batch_profile("input", ("N", 3, 150, 150), 1, 64, 256)
    assert (emb.min_shape, emb.opt_shape, emb.max_shape) == (
        (1, 3, 150, 150),
        (64, 3, 150, 150),
        (256, 3, 150, 150),
    )


def test_bad_profiles_are_user_errors():
    with pytest.raises(UserError, match="dynamic height"):
        engine_cache.batch_profile("input", ("N", 3, "h", "w"), 1, 8, 32)
    with pytest.raises(UserError, match="fixed batch of 1"):
        engine_cache.batch_profile("input", (1, 3, 150, 150), 1, 8, 32)
    with pytest.raises(UserError, match="fixed height of 150"):
        engine_cache.batch_profile("input", ("N", 3, 150, 150), 1, 8, 32, (640, 640))
    with pytest.raises(UserError, match="min <= opt <= max"):
        engine_cache.batch_profile("input", ("N", 3, 150, 150), 8, 4, 32)
    with pytest.raises(UserError, match="differ in rank"):
        Profile("input", (1, 3, 64, 64), (1, 3, 64), (1, 3, 64, 64))


def test_trtexec_shape_and_workspace_syntax():
    assert engine_cache.parse_shape_spec("input:1x3x640x640") == {"input": (1, 3, 640, 640)}
    assert engine_cache.parse_shape_spec("a:1x2,b:3x4") == {"a": (1, 2), "b": (3, 4)}
    assert engine_cache.parse_shape_spec("ns:input:2x3") == {"ns:input": (2, 3)}  # names may hold ':'
    with pytest.raises(UserError, match="bad shape"):
        engine_cache.parse_shape_spec("1x3x640x640")
    with pytest.raises(UserError, match="bad shape"):
        engine_cache.parse_shape_spec("input:1x3xAx640")
    assert engine_cache.parse_workspace("workspace:4096") == 4096
    assert engine_cache.parse_workspace("workspace:4G") == 4096
    assert engine_cache.parse_workspace("2048") == 2048
    with pytest.raises(UserError, match="only the workspace pool"):
        engine_cache.parse_workspace("dlaSRAM:1")
    with pytest.raises(UserError, match="bad workspace size"):
        engine_cache.parse_workspace("workspace:lots")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_user_error(tmp_path):
    from app.inference import tensorrt_backend

    with pytest.raises(UserError, match="^TensorRT is not installed: "):
        tensorrt_backend.TensorRTModel(DETECTOR)
    with pytest.raises(UserError, match="^TensorRT is not installed: "):
        tensorrt_backend.build_engine(DETECTOR, tmp_path / "x.engine", DET_PROFILE)
    with pytest.raises(UserError, match="does not exist"):  # the path is checked before TensorRT
        tensorrt_backend.TensorRTModel(tmp_path / "missing.engine")
