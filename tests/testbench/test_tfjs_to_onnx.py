import base64
import json

import numpy as np
import onnxruntime as ort

from testbench import tfjs_to_onnx


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tiny_model(tmp_path):
    """input (N,8,8,3) -> Conv2D 3x3/2 SAME -> +bias -> ReLU6 -> depthwise 3x3 -> mean over H,W."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    bias = rng.normal(size=(4,)).astype(np.float32)
    depthwise = rng.normal(size=(3, 3, 4, 1)).astype(np.float32)
    weights = [
        ("k", kernel, True),
        ("b", bias, False),
        ("six", np.float32(6.0), True),
        ("dw", depthwise, False),
        ("axes", np.array([1, 2], np.int32), False),
    ]
    manifest, blobs = [], []
    for name, array, half in weights:
        array = np.asarray(array)
        entry = {
            "name": name,
            "shape": list(array.shape),
            "dtype": "int32" if array.dtype == np.int32 else "float32",
        }
        if half:
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(array.astype(np.float16).tobytes())
        else:
            blobs.append(array.tobytes())
        manifest.append(entry)
    conv = {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "padding": {"s": b64("SAME")}}
    dwconv = {"strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": b64("VALID")}}
    dims = [{"size": "-1"}, {"size": "8"}, {"size": "8"}, {"size": "3"}]
    nodes = [{"name": n, "op": "Const"} for n, _, _ in weights] + [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": dims}}}},
        {"name": "c", "op": "Conv2D", "input": ["x", "k"], "attr": conv},
        {"name": "a", "op": "Add", "input": ["c", "b"]},
        {"name": "r", "op": "Relu", "input": ["a"]},
        {"name": "m", "op": "Minimum", "input": ["r", "six"]},
        {"name": "d", "op": "DepthwiseConv2dNative", "input": ["m", "dw"], "attr": dwconv},
        {"name": "out", "op": "Mean", "input": ["d", "axes"], "attr": {"keep_dims": {"b": False}}},
    ]  # fmt: skip
    (tmp_path / "w.bin").write_bytes(b"".join(blobs))
    model = {"modelTopology": {"node": nodes}, "weightsManifest": [{"paths": ["w.bin"], "weights": manifest}]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    return kernel.astype(np.float16).astype(np.float32), bias, depthwise


def reference(x, kernel, bias, depthwise):
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # SAME, stride 2, 8 -> 4: pad 1 at the end
    conv = np.zeros((x.shape[0], 4, 4, 4), np.float32)
    for i in range(4):
        for j in range(4):
            patch = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            conv[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, kernel)
    act = np.minimum(np.maximum(conv + bias, 0), 6)
    out = np.zeros((x.shape[0], 2, 2, 4), np.float32)
    for i in range(2):
        for j in range(2):
            out[:, i, j, :] = np.einsum("nhwc,hwc->nc", act[:, i : i + 3, j : j + 3, :], depthwise[..., 0])
    return out.mean(axis=(1, 2))


def test_a_converted_graph_computes_what_tensorflow_would(tmp_path, capsys):
    kernel, bias, depthwise = tiny_model(tmp_path)
    out = tmp_path / "tiny.onnx"
    assert (
        tfjs_to_onnx.main(["--model", str(tmp_path / "model.json"), "--node", "out", "--output", str(out)])
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["input"] == [None, 8, 8, 3]
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(x, kernel, bias, depthwise), rtol=1e-4, atol=1e-4)


def test_an_existing_output_is_never_replaced(tmp_path, capsys):
    tiny_model(tmp_path)
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"mine")
    assert (
        tfjs_to_onnx.main(["--model", str(tmp_path / "model.json"), "--node", "out", "--output", str(out)])
        == 2
    )
    assert out.read_bytes() == b"mine"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "exists" in err[0]


def test_an_unsupported_op_is_one_error_line(tmp_path, capsys):
    tiny_model(tmp_path)
    model = json.loads((tmp_path / "model.json").read_text())
    model["modelTopology"]["node"].append({"name": "bad", "op": "Erf", "input": ["out"]})
    (tmp_path / "model.json").write_text(json.dumps(model))
    args = ["--model", str(tmp_path / "model.json"), "--node", "bad", "--output", str(tmp_path / "x.onnx")]
    assert tfjs_to_onnx.main(args) == 2
    assert "op Erf" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
