"""Score-level fusion in testbench/eval_identification.py (--fuse), on real photos and the real dlib model."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.support.shared_data import SHARED_IDENTITIES

REPO = Path(__file__).resolve().parents[2]
DLIB = REPO / "checkpoints" / "dlib_resnet.onnx"
JOHNS = SHARED_IDENTITIES / "johns"
FIGURES = ("identified_at_far_1e-2", "identified_at_far_1e-3", "rank1")


def _load(name: str):
    # by file path: tests/testbench would otherwise shadow the top-level testbench folder (namespace package)
    spec = importlib.util.spec_from_file_location(f"testbench_{name}", REPO / "testbench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ev = _load("eval_identification")


def run(capsys, *args: str) -> dict:
    assert ev.main(["--images", str(JOHNS), "--splits", "3", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def nhwc_graph(path: Path) -> Path:
    """A TF.js-style NHWC 16x16 graph: the per-channel means of a 4x4 grid of the chip (48-d)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16, 16, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    shape = helper.make_tensor("shape", TensorProto.INT64, [5], [-1, 4, 4, 4, 12])
    flat = helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 48])
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["grid"]),  # (N, 4 rows, 4, 4 cols, 4*3)
        helper.make_node("ReduceMean", ["grid"], ["cells"], axes=[2], keepdims=0),
        helper.make_node("Reshape", ["cells", "flat"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "grid", [x], [y], [shape, flat])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_fusing_an_embedder_with_itself_leaves_its_cosine_figures_whatever_the_weight(capsys):
    half = run(capsys, "--fuse", str(DLIB), "--fuse-weight", "0.5")
    whole = run(capsys, "--fuse", str(DLIB), "--fuse-weight", "1.0")
    for key in FIGURES:
        assert half[key] == whole[key]
    assert half["fuse_weights"] == [0.5] and half["model_id"].endswith("+dlib_resnet")
    assert half["rank1"] > 0.9  # the real model on the real photos


def test_a_tfjs_graph_fused_with_weight_zero_changes_no_figure(tmp_path, capsys):
    graph = nhwc_graph(tmp_path / "grid.onnx")
    alone = run(capsys, "--fuse", str(DLIB), "--fuse-weight", "1.0")
    zero = run(capsys, "--fuse", str(DLIB), "--fuse-weight", "1", "--fuse", str(graph), "--fuse-weight", "0")
    for key in FIGURES:
        assert zero[key] == alone[key]
    some = run(capsys, "--fuse", str(graph), "--fuse-weight", "0.9", "--flip")
    assert some["fuse_weights"] == [0.9] and some["flip"] is True
    assert 0.0 <= some["rank1"] <= 1.0 and not np.isnan(some["identified_at_far_1e-2"])


def test_fuse_weights_that_leave_nothing_or_do_not_pair_up_are_one_error_line(capsys):
    for args in (
        ["--fuse", str(DLIB), "--fuse-weight", "0.7", "--fuse", str(DLIB), "--fuse-weight", "0.7"],
        ["--fuse", str(DLIB), "--fuse-weight", "0.2", "--fuse-weight", "0.2"],
        ["--fuse", str(DLIB), "--fuse-weight", "-0.1"],
    ):
        assert ev.main(["--images", str(JOHNS), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "--fuse-weight" in err[0]


def test_calibrate_recommends_a_threshold_for_a_fusion(capsys):
    calibrate = _load("calibrate")
    args = ["--images", str(JOHNS), "--splits", "3", "--fuse", str(DLIB), "--fuse-weight", "0.5"]
    assert calibrate.main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["model_id"].endswith("+dlib_resnet")
    assert line["threshold"] >= max(line["threshold_at_far_k1"], line["threshold_at_far_k3"])


def test_a_probe_frame_that_is_not_width_by_height_is_one_error_line(capsys):
    for frame, problem in (("12x", "is not WIDTHxHEIGHT"), ("32x32", "is too small")):
        assert ev.main(["--images", str(JOHNS), "--probe-face-px", "30", "--frame", frame]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --frame {frame!r} {problem}; use e.g. --frame 1280x720"]
