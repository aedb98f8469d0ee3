"""Point-level gallery access on both engines: ids with payloads, and removing single embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.config import Settings
from app.gallery import open_gallery
from tests.support.unknowns import person_centres


class Spec:
    model_id = "dlib-0123456789ab"
    dim = 128
    metric = "euclidean"


@pytest.fixture(params=["edge", "server"])
def gallery(request: pytest.FixtureRequest, tmp_path: Path):
    settings = Settings(qdrant_path=tmp_path / "gallery", qdrant_collection="faces")
    client = None if request.param == "edge" else QdrantClient(path=str(tmp_path / "qdrant-local"))
    g = open_gallery(settings, Spec(), client=client)
    yield g
    g.close()


def test_points_carry_ids_and_one_embedding_can_be_removed(gallery):
    vectors = person_centres(4)
    gallery.add("ann", vectors[:3], [{"source": f"a{i}.jpg"} for i in range(3)])
    gallery.add("bob", vectors[3:], {"source": "b.jpg"})
    points = gallery.points("ann", with_vectors=True)
    assert [p[1]["source"] for p in points] == ["a0.jpg", "a1.jpg", "a2.jpg"]
    assert np.allclose(points[1][2], vectors[1], atol=1e-6)
    assert gallery.remove_points([points[1][0]]) == 1
    assert gallery.list() == {"ann": 2, "bob": 1}
    assert [p[1]["source"] for p in gallery.points("ann")] == ["a0.jpg", "a2.jpg"]
    assert len(gallery.points()) == 3
