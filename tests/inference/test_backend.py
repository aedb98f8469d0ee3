from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from app.errors import UserError
from app.inference.backend import load_model
from app.inference.interface import Model, TensorInfo

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"


def _write_model(path: Path, input_shape: list, op: str = "GlobalAveragePool") -> Path:
    """A one-node ONNX model; GlobalAveragePool maps (N,C,H,W) -> (N,C,1,1)."""
    out_shape = [input_shape[0], input_shape[1], 1, 1] if op == "GlobalAveragePool" else input_shape
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def detector() -> Model:
    return load_model(DETECTOR)


def test_detector_reports_tensor_info(detector):
    assert isinstance(detector, Model)
    (inp,) = detector.inputs
    assert inp == TensorInfo("input", inp.shape, "float32")
    assert len(inp.shape) == 4 and inp.shape[1] == 3
    assert inp.fixed_hw is None and inp.fixed_batch is None  # dynamic export
    assert [o.name for o in detector.outputs] == ["loc", "conf", "landmarks"]
    assert [o.shape[-1] for o in detector.outputs] == [4, 2, 10]


def test_run_returns_outputs_in_declared_order(detector):
    batch = np.zeros((2, 3, 640, 640), np.float32)
    loc, conf, landmarks = detector.run(batch)
    assert loc.shape == (2, 16800, 4)
    assert conf.shape == (2, 16800, 2)
    assert landmarks.shape == (2, 16800, 10)
    # conf is softmaxed inside the model
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)


def test_threads_option_gives_same_numbers(detector):
    rng = np.random.default_rng(0)
    batch = rng.normal(0, 50, (1, 3, 320, 320)).astype(np.float32)
    single = load_model(DETECTOR, threads=1)
    for a, b in zip(detector.run(batch), single.run(batch), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cpu_provider_is_used_here(detector):
    assert detector.providers[-1] == "CPUExecutionProvider"
    assert "AzureExecutionProvider" not in detector.providers


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.onnx does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_text_file_renamed_onnx_is_a_one_line_user_error(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a model\n" * 20)
    with pytest.raises(UserError) as info:
        load_model(fake)
    message = str(info.value)
    assert "fake.onnx" in message and "re-export or re-download" in message
    assert "\n" not in message


def test_wrong_input_rank_is_a_user_error(tmp_path):
    path = _write_model(tmp_path / "flat.onnx", ["N", 10], op="Relu")
    with pytest.raises(UserError, match=r"flat.onnx must have one NCHW \(rank-4\) image input"):
        load_model(path)


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown inference backend 'onnx'"):
        load_model(DETECTOR, backend="onnx")


def test_tensorrt_backend_needs_the_tensorrt_provider():
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        assert "TensorrtExecutionProvider" in load_model(DETECTOR, backend="tensorrt").providers
    else:
        with pytest.raises(UserError, match="needs onnxruntime-gpu built with TensorRT"):
            load_model(DETECTOR, backend="tensorrt")


def test_fixed_batch_model_is_fed_in_chunks(tmp_path):
    model = load_model(_write_model(tmp_path / "fixed.onnx", [1, 3, 4, 4]))
    assert model.inputs[0].fixed_batch == 1 and model.inputs[0].fixed_hw == (4, 4)
    batch = np.arange(3 * 3 * 16, dtype=np.float32).reshape(3, 3, 4, 4)
    (out,) = model.run(batch)
    np.testing.assert_allclose(out[:, :, 0, 0], batch.mean(axis=(2, 3)))


def test_a_fixed_batch_tail_is_padded_and_its_padding_rows_dropped(tmp_path):
    model = load_model(_write_model(tmp_path / "fixed2.onnx", [2, 3, 4, 4]))
    batch = np.arange(5 * 3 * 16, dtype=np.float32).reshape(5, 3, 4, 4)
    (out,) = model.run(batch)
    assert out.shape == (5, 3, 1, 1)
    np.testing.assert_allclose(out[:, :, 0, 0], batch.mean(axis=(2, 3)))


def test_input_is_cast_to_the_model_dtype(tmp_path):
    model = load_model(_write_model(tmp_path / "dyn.onnx", ["N", 3, 2, 2]))
    (out,) = model.run(np.full((2, 3, 2, 2), 7, np.uint8))
    assert out.dtype == np.float32 and out.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(out, 7.0)
