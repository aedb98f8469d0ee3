"""create_engine's CLI up to the TensorRT build: argument parsing, profiles, calibration data, errors."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from app.errors import UserError
from app.inference.engine_cache import Profile
from app.vision.image_io import read_image
from app.vision.retinaface import letterbox
from testbench import create_engine
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"


def _profile(argv: list[str], model: Path = DETECTOR) -> Profile:
    args = create_engine.parse_args(["--onnx", str(model), *argv])
    name, shape = create_engine.onnx_input(model)
    return create_engine.resolve_profile(args, name, shape)


def test_trtexec_style_flags():
    args = create_engine.parse_args(
        [
            "--onnx",
            str(DETECTOR),
            "--saveEngine",
            "det.engine",
            "--fp16",
            "--minShapes",
            "input:1x3x640x640",
            "--optShapes",
            "input:8x3x640x640",
            "--maxShapes",
            "input:32x3x640x640",
            "--memPoolSize",
            "workspace:2048",
        ]
    )
    assert args.save_engine == Path("det.engine") and args.fp16 and not args.int8
    assert create_engine.precision_of(args) == "fp16"
    profile = create_engine.resolve_profile(args, "input", ("batch_size", 3, "height", "width"))
    assert profile == Profile("input", (1, 3, 640, 640), (8, 3, 640, 640), (32, 3, 640, 640))


def test_batch_shorthand_reads_the_model_input():
    assert _profile(["--batch", "1,8,32", "--size", "640"]) == Profile(
        "input", (1, 3, 640, 640), (8, 3, 640, 640), (32, 3, 640, 640)
    )
    assert _profile(["--batch", "1,64,256"], EMBEDDER).max_shape == (256, 3, 150, 150)
    assert _profile([], EMBEDDER).opt_shape == (8, 3, 150, 150)  # default 1,8,32


def test_profile_errors():
    with pytest.raises(UserError, match="all three"):
        _profile(["--minShapes", "input:1x3x64x64"])
    with pytest.raises(UserError, match="must name the model input 'input'"):
        _profile(["--minShapes", "x:1x3x64x64", "--optShapes", "x:1x3x64x64", "--maxShapes", "x:1x3x64x64"])
    with pytest.raises(UserError, match="dynamic height"):
        _profile(["--batch", "1,8,32"])  # a detector needs --size
    with pytest.raises(UserError, match="MIN,OPT,MAX"):
        _profile(["--batch", "8"], EMBEDDER)


def test_precision_flags():
    def precision(*flags: str) -> str:
        return create_engine.precision_of(create_engine.parse_args(["--onnx", "m.onnx", *flags]))

    assert precision() == "fp32"
    assert precision("--fp16") == "fp16"
    assert precision("--int8", "--calib", "frames") == "int8"
    with pytest.raises(UserError, match="--int8 needs calibration images"):
        precision("--int8")


def test_detector_calibration_batches_use_the_pipeline_letterbox():
    paths = [SHARED_FACES / n for n in ("obama-720p.jpg", "two_people.jpg", "alex-lacamoire.png")]
    batches = list(create_engine.calibration_batches(paths, (2, 3, 320, 320), DETECTOR, detector=True))
    assert len(batches) == 1  # 3 images in batches of 2: the short tail is dropped
    assert batches[0].shape == (2, 3, 320, 320) and batches[0].dtype == np.float32
    np.testing.assert_array_equal(batches[0][1], letterbox(read_image(paths[1]), 320)[0])


def test_embedder_calibration_batches_are_normalised_chips():
    paths = [SHARED_FACES / "obama_small.jpg"]
    (batch,) = create_engine.calibration_batches(paths, (1, 3, 150, 150), EMBEDDER, detector=False)
    assert batch.shape == (1, 3, 150, 150)
    assert batch.min() > -0.6 and batch.max() < 0.6  # (x - mean) / 256 for 8-bit pixels


def test_calibration_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        create_engine.calibration_images(tmp_path / "none", 10)
    with pytest.raises(UserError, match="no images"):
        create_engine.calibration_images(tmp_path, 10)
    assert len(create_engine.calibration_images(SHARED_FACES, 3)) == 3


def test_is_detector():
    assert create_engine.is_detector(("N", 3, "h", "w"), 3)
    assert not create_engine.is_detector(("N", 3, 150, 150), 1)


def test_cli_errors_exit_2(capsys, tmp_path):
    assert create_engine.main(["--onnx", str(tmp_path / "missing.onnx"), "--fp16"]) == 2
    assert "error: model file" in capsys.readouterr().err
    if importlib.util.find_spec("tensorrt") is None:
        assert create_engine.main(["--onnx", str(EMBEDDER), "--fp16", "--batch", "1,64,256"]) == 2
        assert capsys.readouterr().err.startswith("error: TensorRT is not installed: ")
