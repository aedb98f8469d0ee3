import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from app.errors import UserError
from app.inference.backend import load_model
from app.inference.spec import (
    ARCFACE_TEMPLATE,
    DLIB_DEFAULT_THRESHOLD,
    DLIB_TEMPLATE,
    distance_from_similarity,
    embedder_spec_for,
    pairwise_similarity,
    rowwise_similarity,
    similarity_from_distance,
)

REPO = Path(__file__).resolve().parents[2]
DLIB = REPO / "checkpoints" / "dlib_resnet.onnx"


def _embedder(path: Path, size: int, dim: int | str = 512) -> Path:
    """A stand-in embedder: NCHW (size x size) -> Flatten -> MatMul to `dim` (or a dynamic output)."""
    weight = np.ones((3 * size * size, dim if isinstance(dim, int) else 8), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "emb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_dlib_model_is_auto_detected():
    spec = embedder_spec_for(DLIB)
    assert spec.kind == "dlib"
    assert spec.input_size == (150, 150) and spec.dim == 128
    assert spec.metric == "euclidean" and spec.channel_order == "RGB"
    assert spec.threshold == DLIB_DEFAULT_THRESHOLD
    np.testing.assert_array_equal(spec.template, DLIB_TEMPLATE)
    digest = hashlib.sha256(DLIB.read_bytes()).hexdigest()[:12]
    assert spec.model_id == f"dlib-{digest}"


def test_spec_from_a_loaded_model_matches_spec_from_the_file():
    model = load_model(DLIB)
    from_model = embedder_spec_for(DLIB, "auto", model)
    from_file = embedder_spec_for(DLIB)
    assert from_model.model_id == from_file.model_id and from_model.dim == from_file.dim


def test_112_input_is_arcface_with_cosine(tmp_path):
    spec = embedder_spec_for(_embedder(tmp_path / "arc.onnx", 112, 512))
    assert spec.kind == "arcface" and spec.model_id.startswith("arcface-")
    assert spec.input_size == (112, 112) and spec.dim == 512 and spec.metric == "cosine"
    np.testing.assert_allclose(spec.template, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(spec.mean, 127.5)
    np.testing.assert_allclose(spec.std, 127.5)


def test_template_points_are_image_left_first():
    for template in (DLIB_TEMPLATE, ARCFACE_TEMPLATE):
        assert template[0, 0] < template[1, 0]  # eyes
        assert template[3, 0] < template[4, 0]  # mouth corners
        assert template[0, 1] < template[2, 1] < template[3, 1]  # eyes above nose above mouth


def test_dynamic_output_dim_is_probed_with_the_model(tmp_path):
    path = _embedder(tmp_path / "arc_dyn.onnx", 112, "D")
    spec = embedder_spec_for(path, "auto", load_model(path))
    assert spec.dim == 8


def test_explicit_arcface_at_224_scales_the_template(tmp_path):
    spec = embedder_spec_for(_embedder(tmp_path / "arc224.onnx", 224, 16), kind="arcface")
    assert spec.input_size == (224, 224)
    np.testing.assert_allclose(spec.template, ARCFACE_TEMPLATE * 2, rtol=1e-6)


def test_unknown_input_size_needs_an_explicit_kind(tmp_path):
    with pytest.raises(UserError, match="set FACEPIPE_EMBEDDER=dlib, arcface or mobilefacenet"):
        embedder_spec_for(_embedder(tmp_path / "odd.onnx", 96, 16))


def test_dlib_kind_on_a_112_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="needs 150x150"):
        embedder_spec_for(_embedder(tmp_path / "arc.onnx", 112, 16), kind="dlib")


def test_bad_kind_and_missing_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown embedder kind"):
        embedder_spec_for(DLIB, kind="facenet")
    with pytest.raises(UserError, match="does not exist"):
        embedder_spec_for(tmp_path / "missing.onnx")


def test_preprocess_normalises_to_nchw():
    spec = embedder_spec_for(DLIB)
    chips = np.zeros((2, 150, 150, 3), np.uint8)
    chips[0] = [123, 117, 104]
    chips[1, :, :, 0] = 255
    x = spec.preprocess(chips)
    assert x.shape == (2, 3, 150, 150) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 0, 0], (np.array([123, 117, 104]) - spec.mean) / 256, atol=1e-6)
    np.testing.assert_allclose(x[1, 0], (255 - 122.782) / 256, atol=1e-6)


def test_preprocess_gives_bit_for_bit_the_values_of_widen_normalise_transpose(tmp_path):
    rng = np.random.default_rng(7)
    for spec in (embedder_spec_for(DLIB), embedder_spec_for(_embedder(tmp_path / "arc.onnx", 112, 4))):
        w, h = spec.input_size
        for n in (1, 5, 16):
            chips = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            plain = ((chips.astype(np.float32) - spec.mean) / spec.std).transpose(0, 3, 1, 2)
            x = spec.preprocess(chips)
            assert x.flags.c_contiguous and np.array_equal(x, plain)


def test_postprocess_normalises_only_cosine(tmp_path):
    arc = embedder_spec_for(_embedder(tmp_path / "arc.onnx", 112, 4))
    dlib = embedder_spec_for(DLIB)
    raw = np.array([[3.0, 4.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(arc.postprocess(raw), [[0.6, 0.8, 0, 0]])
    np.testing.assert_allclose(dlib.postprocess(raw), raw)


def test_similarity_helpers():
    a = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    b = np.array([[0.0, 0.6], [3.0, 4.0]], np.float32)
    euclid = pairwise_similarity(a, b, "euclidean")
    np.testing.assert_allclose(euclid, [[0.4, -4.0], [1 - np.hypot(3, 3.4), 1.0]], atol=1e-5)
    np.testing.assert_allclose(rowwise_similarity(a, b, "euclidean"), np.diag(euclid), atol=1e-6)
    cos = pairwise_similarity(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0], [0.0, 2.0]]), "cosine")
    np.testing.assert_allclose(cos, [[np.sqrt(0.5), 0.0]], atol=1e-6)
    assert similarity_from_distance(0.6) == pytest.approx(0.4)
    assert distance_from_similarity(0.46) == pytest.approx(0.54)
    with pytest.raises(ValueError):
        similarity_from_distance(0.1, "manhattan")
