"""The demo works: video faces match the person enrolled from another photo; strangers match no one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.config import load_settings
from app.demo import Scenario, demo_sets, images_from_dir, render, standard_scenario
from app.inference.spec import pairwise_similarity
from app.models.paths import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
from app.recognition.analyzer import FaceAnalyzer
from app.vision.image_io import read_image
from tests.support.shared_data import KNN_TRAIN


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    overrides = {"detector_model": DEFAULT_DETECTOR, "embedder_model": DEFAULT_EMBEDDER}
    return FaceAnalyzer(load_settings(overrides, env_file=None))


@pytest.fixture(scope="module")
def gallery(analyzer: FaceAnalyzer, demo_images_dir: Path) -> dict[str, np.ndarray]:
    vectors = {}
    for label, paths in demo_sets(demo_images_dir).enroll.items():
        image = read_image(paths[0])
        faces = analyzer.detect(image)
        best = faces.largest()
        vectors[label] = analyzer.embed(image, faces.landmarks[best : best + 1])[0]
    return vectors


def _best_matches(
    scenario: Scenario, analyzer: FaceAnalyzer, gallery: dict[str, np.ndarray], every: int
) -> list[tuple[str, str | None]]:
    """(true label, gallery label matched at the spec's threshold or None) per face with visible >= 0.9."""
    labels = list(gallery)
    vectors = np.stack([gallery[label] for label in labels])
    results = []
    for index, (frame, faces) in enumerate(render(scenario)):
        wanted = [f for f in faces if f.visible >= 0.9]
        if index % every or not wanted:
            continue
        # Embed at the ground-truth landmarks: this checks the video's faces, not the detector.
        landmarks = np.array([f.landmarks for f in wanted], np.float32)
        similarity = pairwise_similarity(analyzer.embed(frame, landmarks), vectors, analyzer.spec.metric)
        for face, row in zip(wanted, similarity, strict=True):
            best = int(np.argmax(row))
            results.append((face.label, labels[best] if row[best] >= analyzer.spec.threshold else None))
    return results


@pytest.mark.slow
def test_demo_video_faces_are_recognised_as_the_enrolled_person(
    analyzer: FaceAnalyzer, gallery: dict[str, np.ndarray], demo_images_dir: Path
) -> None:
    scenario = standard_scenario(demo_sets(demo_images_dir).video, seed=0)
    results = _best_matches(scenario, analyzer, gallery, every=3)
    assert len(results) > 120
    for label in ("obama", "biden"):
        mine = [matched for truth, matched in results if truth == label]
        assert mine and sum(m == label for m in mine) / len(mine) >= 0.95, f"{label}: {mine}"


@pytest.mark.slow
def test_strangers_match_no_enrolled_person(analyzer: FaceAnalyzer, gallery: dict[str, np.ndarray]) -> None:
    strangers = {k: v for k, v in images_from_dir(KNN_TRAIN).items() if k not in ("obama", "biden")}
    scenario = replace(standard_scenario(strangers, seed=0), n_frames=250)
    results = _best_matches(scenario, analyzer, gallery, every=5)
    assert len(results) > 40
    assert [r for r in results if r[1] is not None] == []
