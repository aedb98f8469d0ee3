"""The configured embedder has one home: every user gets the same spec, threshold override included."""

from __future__ import annotations

import dataclasses

import numpy as np

from app.config import Settings
from app.inference.spec import DLIB_DEFAULT_THRESHOLD, EmbedderSpec, embedder_spec_for
from app.recognition.analyzer import FaceAnalyzer
from app.recognition.embedder import configured_spec, load_embedder
from app.stages.embed import FaceEmbedder
from tests.support.shared_data import REPO

EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"


def settings(**changes: object) -> Settings:
    return Settings(detector_model=DETECTOR, embedder_model=EMBEDDER).replace(**changes)


def described(spec: EmbedderSpec) -> tuple[object, ...]:
    """What tells embedder specs apart (their templates and means are arrays, which `==` cannot compare)."""
    return (spec.model_id, spec.kind, spec.input_size, spec.dim, spec.metric, spec.threshold)


def test_without_a_threshold_setting_the_embedders_measured_threshold_stays():
    spec = configured_spec(settings())
    assert spec.threshold == DLIB_DEFAULT_THRESHOLD and described(spec) == described(
        embedder_spec_for(EMBEDDER)
    )


def test_the_threshold_setting_replaces_the_measured_one_and_nothing_else():
    spec = configured_spec(settings(match_threshold=0.5))
    assert spec.threshold == 0.5
    measured = dataclasses.replace(spec, threshold=DLIB_DEFAULT_THRESHOLD)
    assert described(measured) == described(embedder_spec_for(EMBEDDER))


def test_the_loaded_embedder_and_its_spec_agree():
    model, spec = load_embedder(settings(match_threshold=0.42), threads=1)
    w, h = spec.input_size
    chips = np.zeros((2, h, w, 3), np.uint8)
    embeddings = spec.postprocess(model.run(spec.preprocess(chips))[0])
    assert embeddings.shape == (2, spec.dim) and spec.threshold == 0.42


def test_enrolment_and_the_pipelines_embedder_use_the_same_threshold(tmp_path):
    chosen = settings(match_threshold=0.37, qdrant_path=tmp_path / "gallery")
    embedder = FaceEmbedder(chosen, threads=1)
    try:
        info = embedder.setup()
    finally:
        embedder.close()
    analyzer = FaceAnalyzer(chosen)
    assert info["threshold"] == analyzer.spec.threshold == 0.37
    assert described(embedder.spec) == described(analyzer.spec) == described(configured_spec(chosen))
