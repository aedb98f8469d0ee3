"""The unknowns store on the embedded Qdrant engine: sightings written whole, retention, size bound,
the embedder check and missing crops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.config import load_settings
from app.errors import UserError
from app.gallery.unknowns import open_unknowns, remove_store
from tests.support.unknowns import person_centres, sighting_of


@dataclasses.dataclass(frozen=True)
class Spec:
    model_id: str = "dlib-test"
    dim: int = 128
    metric: str = "euclidean"


@pytest.fixture
def settings(tmp_path):
    return load_settings({"qdrant_path": str(tmp_path / "gallery")}, env_file=None)


def test_a_sighting_is_stored_with_its_crops_and_read_back(settings):
    rng = np.random.default_rng(0)
    with open_unknowns(settings, Spec()) as store:
        sighting = sighting_of(person_centres(1)[0], 3, 1000.0, rng, track=7)
        assert store.add(sighting) == 3
        faces = store.faces(with_vectors=True)
        assert [f.sighting for f in faces] == [sighting.id] * 3
        assert {f.track for f in faces} == {7} and faces[0].camera == "cam1"
        assert all(store.crop_path(f).is_file() for f in faces)
        assert np.allclose(faces[0].vector, sighting.faces[0].vector, atol=1e-5)


def test_forget_removes_points_and_crops(settings):
    rng = np.random.default_rng(1)
    with open_unknowns(settings, Spec()) as store:
        a = sighting_of(person_centres(1)[0], 2, 1000.0, rng)
        b = sighting_of(person_centres(1)[0], 2, 2000.0, rng)
        store.add(a)
        store.add(b)
        crops = [store.crop_path(f) for f in store.faces() if f.sighting == a.id]
        assert store.forget([a.id]) == 2
        assert {f.sighting for f in store.faces()} == {b.id}
        assert not any(p.exists() for p in crops)


def test_retention_drops_old_sightings_and_the_size_bound_the_oldest(settings):
    rng = np.random.default_rng(2)
    day = 86400.0
    now = 100 * day
    with open_unknowns(settings, Spec()) as store:
        old = sighting_of(person_centres(1)[0], 2, now - 40 * day, rng)
        mid = sighting_of(person_centres(1)[0], 2, now - 5 * day, rng)
        new = sighting_of(person_centres(1)[0], 2, now - 1 * day, rng)
        for s in (old, mid, new):
            store.add(s)
        assert store.prune(retain_days=30, max_faces=100, now=now) == 2
        assert {f.sighting for f in store.faces()} == {mid.id, new.id}
        assert store.prune(retain_days=30, max_faces=3, now=now) == 2
        assert {f.sighting for f in store.faces()} == {new.id}


def test_unknowns_of_another_embedder_are_refused_in_one_line(settings):
    rng = np.random.default_rng(3)
    with open_unknowns(settings, Spec()) as store:
        store.add(sighting_of(person_centres(1)[0], 2, 1000.0, rng))
    other = Spec(model_id="arcface-other", dim=512, metric="cosine")
    with pytest.raises(UserError, match="kept with embedder dlib-test") as info:
        open_unknowns(settings, other)
    assert "\n" not in str(info.value) and "forget --all" in str(info.value)
    assert remove_store(settings) == 2  # --all works whatever embedder kept them
    with open_unknowns(settings, other) as store:
        assert store.faces() == []


def test_the_store_works_on_a_qdrant_server_collection_too(settings, tmp_path):
    from qdrant_client import QdrantClient

    rng = np.random.default_rng(6)
    client = QdrantClient(path=str(tmp_path / "qdrant-local"))  # speaks the server API
    with open_unknowns(settings, Spec(), client=client) as store:
        a = sighting_of(person_centres(1)[0], 3, 1000.0, rng)
        store.add(a)
        assert [f.sighting for f in store.faces()] == [a.id] * 3
        assert store.folder == settings.qdrant_path / "faces_unknowns"  # crops stay local
        assert store.forget([a.id]) == 3 and store.faces() == []


def test_a_missing_crop_is_a_one_line_error(settings):
    rng = np.random.default_rng(4)
    with open_unknowns(settings, Spec()) as store:
        store.add(sighting_of(person_centres(1)[0], 1, 1000.0, rng))
        face = store.faces()[0]
        store.crop_path(face).unlink()
        with pytest.raises(UserError, match="is missing"):
            store.crop_path(face)


def test_a_failed_write_leaves_no_crops_behind(settings):
    rng = np.random.default_rng(5)
    with open_unknowns(settings, Spec()) as store:
        bad = sighting_of(person_centres(1)[0], 2, 1000.0, rng)
        bad.faces[1].vector = np.full(128, np.nan, np.float32)  # the gallery refuses NaN vectors
        with pytest.raises(ValueError):
            store.add(bad)
        assert store.faces() == []
        assert not any(store.crops.iterdir())
