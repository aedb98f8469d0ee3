"""The dlib ResNet converter on the real model file, and the converted embedder on real faces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.models import paths
from app.models.archive_members import read_tar_members
from app.models.catalog import EMBEDDER
from app.models.dlib_converter import (
    EXPECTED_PARAMETERS,
    DlibFormatError,
    build_onnx,
    convert_dlib_to_onnx,
    parse_dlib_network,
)
from app.models.download import ensure_source
from tests.models.dlib_chips import FaceChipMaker, normalise_chips
from tests.support.shared_data import SHARED_FACES

# dlib 20.0.1 compute_face_descriptor() of the synthetic chip below (first 8 values and the L2 norm).
DLIB_REFERENCE_HEAD = [
    -0.07795896,
    0.10818017,
    0.04491404,
    -0.01565841,
    -0.05082132,
    -0.07069659,
    -0.0777278,
    0.0071279,
]
DLIB_REFERENCE_NORM = 1.2808154100190983


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    archive, _ = ensure_source(EMBEDDER.source, paths.cache_dir(), progress=False)
    member = EMBEDDER.outputs[0].member
    return read_tar_members(archive, {member}, progress=False)[member]


@pytest.fixture(scope="module")
def session(embedder_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(embedder_path), providers=["CPUExecutionProvider"])


def test_real_file_parses_to_the_expected_parameter_count(dat_bytes: bytes) -> None:
    network = parse_dlib_network(dat_bytes)
    assert network.parameter_count == EXPECTED_PARAMETERS == 5_614_592
    assert network.input_size == (150, 150)
    np.testing.assert_allclose(network.mean_rgb, [122.782, 117.001, 104.298], atol=1e-4)
    kinds = [layer.kind for layer in network.layers]
    assert kinds.count("con_4") == 29
    assert kinds.count("add_prev_") == 14
    assert kinds[-1] == "fc_2"
    fc = network.layers[-1]
    assert fc.tensors["weight"].shape == (256, 128) and "bias" not in fc.tensors  # fc_no_bias
    down_convs = [
        layer for layer in network.layers if layer.kind == "con_4" and layer.settings["stride_y"] == 2
    ]
    assert [c.settings["nr"] for c in down_convs] == [7, 3, 3, 3, 3]
    assert all(c.settings["pad_y"] == 0 for c in down_convs)


def test_conversion_is_checked_deterministic_and_matches_the_catalogue(dat_bytes: bytes) -> None:
    first = convert_dlib_to_onnx(dat_bytes)
    assert first == convert_dlib_to_onnx(dat_bytes)
    assert hashlib.sha256(first).hexdigest() == EMBEDDER.outputs[0].sha256
    model = onnx.load_from_string(first)
    onnx.checker.check_model(model, full_check=True)
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert sum(int(np.prod(i.dims)) for i in floats) == EXPECTED_PARAMETERS


def test_graph_io_is_normalised_nchw_in_and_128d_out(dat_bytes: bytes) -> None:
    graph = build_onnx(parse_dlib_network(dat_bytes)).graph
    (inp,), (out,) = graph.input, graph.output
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp)) == ("input", ["N", 3, 150, 150])
    assert (out.name, dims(out)) == ("embedding", ["N", 128])


def test_wrong_parameter_count_fails_loudly(dat_bytes: bytes) -> None:
    # Cut the file after the last conv: the fc layer (and its 32,768 weights) is missing.
    with pytest.raises(DlibFormatError):
        parse_dlib_network(dat_bytes[: dat_bytes.rfind(b"\x01\x04fc_2")])


def test_onnx_matches_dlib_on_a_synthetic_chip(session: ort.InferenceSession) -> None:
    y, x, c = np.mgrid[0:150, 0:150, 0:3]
    chip = ((x * 3 + y * 5 + c * 70) % 256).astype(np.uint8)[None]
    (embedding,) = session.run(None, {"input": normalise_chips(chip)})
    assert embedding.shape == (1, 128)
    np.testing.assert_allclose(embedding[0, :8], DLIB_REFERENCE_HEAD, atol=1e-5)
    assert np.linalg.norm(embedding[0]) == pytest.approx(DLIB_REFERENCE_NORM, abs=1e-5)


def _chip(maker: FaceChipMaker, path: Path) -> np.ndarray:
    chips = maker.chips(cv2.imread(str(path)))
    assert len(chips) >= 1, f"no face found in {path}"
    return chips[0]


def test_embeddings_separate_people(session: ort.InferenceSession, chip_maker: FaceChipMaker) -> None:
    train = sorted((SHARED_FACES / "knn_examples" / "train").glob("*/*"))
    test_people = {"obama1": "obama", "alex_lacamoire1": "alex_lacamoire", "johnsnow_test1": "kit_harington"}
    photos = train + [SHARED_FACES / "knn_examples" / "test" / f"{stem}.jpg" for stem in test_people]
    people = [p.parent.name for p in train] + list(test_people.values())
    chips = np.stack([_chip(chip_maker, p) for p in photos])
    (embeddings,) = session.run(None, {"input": normalise_chips(chips)})  # one batch: dynamic N
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2)
    same = np.array(people)[:, None] == np.array(people)[None]
    off_diagonal = ~np.eye(len(people), dtype=bool)
    assert (same & off_diagonal).sum() // 2 == 9  # obama 3, kit 3, biden 1, rose 1, alex 1 pairs
    assert distances[same & off_diagonal].max() < 0.6
    assert distances[~same].min() > 0.6
    # A batch gives the same vectors as one-by-one runs.
    (single,) = session.run(None, {"input": normalise_chips(chips[:1])})
    np.testing.assert_allclose(single[0], embeddings[0], atol=1e-5)
