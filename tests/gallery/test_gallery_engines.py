"""Both gallery engines behind one contract: qdrant-edge and qdrant-client (local mode, the server API)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.config import Settings
from app.errors import UserError
from app.gallery import Gallery, GalleryMismatchError, Match, open_gallery
from app.gallery.base import (
    PERSON_PHOTOS,
    PERSON_SOFTNESS,
    best_per_person,
    person_score,
    person_similarity,
    similarities_from_scores,
)
from app.gallery.edge import EdgeGallery
from app.gallery.server import ServerGallery


@dataclass(frozen=True)
class Spec:
    model_id: str
    dim: int
    metric: str


DLIB = Spec("dlib-0123456789ab", 128, "euclidean")
ARC = Spec("arcface-ba9876543210", 512, "cosine")


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def open_engine(engine: str, tmp_path: Path, spec: Spec) -> Gallery:
    settings = Settings(qdrant_path=tmp_path / "gallery", qdrant_collection="faces")
    if engine == "edge":
        return open_gallery(settings, spec)
    return open_gallery(settings, spec, client=QdrantClient(path=str(tmp_path / "qdrant-local")))


@pytest.fixture(params=["edge", "server"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def gallery(engine: str, tmp_path: Path) -> Iterator[Gallery]:
    g = open_engine(engine, tmp_path, DLIB)
    yield g
    g.close()


def test_factory_picks_engine(tmp_path: Path) -> None:
    edge = open_engine("edge", tmp_path, DLIB)
    server = open_engine("server", tmp_path, DLIB)
    assert isinstance(edge, EdgeGallery) and edge.folder == tmp_path / "gallery" / "faces"
    assert isinstance(server, ServerGallery)
    assert isinstance(edge, Gallery) and isinstance(server, Gallery)
    edge.close()
    server.close()


def test_add_list_vectors_remove(gallery: Gallery) -> None:
    rng = np.random.default_rng(0)
    alice, bob = rng.normal(size=(3, 128)).astype(np.float32), rng.normal(size=(2, 128)).astype(np.float32)
    assert gallery.add("alice", alice, meta=[{"source": f"a{i}.jpg"} for i in range(3)]) == 3
    assert gallery.add("bob", bob, meta={"source": "b.jpg"}) == 2
    assert gallery.list() == {"alice": 3, "bob": 2}
    np.testing.assert_allclose(
        sorted(map(tuple, gallery.vectors("alice"))), sorted(map(tuple, alice)), rtol=1e-6
    )
    info = gallery.info()
    assert (info.model_id, info.dim, info.metric, info.count, info.persons) == (
        DLIB.model_id,
        128,
        "euclidean",
        5,
        2,
    )
    payloads = [payload for payload, _ in gallery.records("alice")]  # type: ignore[attr-defined]
    assert sorted(p["source"] for p in payloads) == ["a0.jpg", "a1.jpg", "a2.jpg"]
    assert all(p["name"] == "alice" and p["added"].endswith("+00:00") for p in payloads)
    assert gallery.remove("alice") == 3
    assert gallery.remove("alice") == 0
    assert gallery.list() == {"bob": 2}
    assert gallery.vectors("alice").shape == (0, 128)


def test_euclidean_similarity_is_one_minus_distance(gallery: Gallery) -> None:
    base = np.zeros((1, 128), np.float32)
    gallery.add("near", base + np.eye(128, dtype=np.float32)[0] * 0.3)
    gallery.add("far", base + np.eye(128, dtype=np.float32)[1] * 0.9)
    (matches,) = gallery.search(base, k=5)
    assert [m.name for m in matches] == ["near", "far"]
    assert matches[0].similarity == pytest.approx(0.7, abs=1e-5)
    assert matches[1].similarity == pytest.approx(0.1, abs=1e-5)


def test_cosine_similarity(engine: str, tmp_path: Path) -> None:
    g = open_engine(engine, tmp_path, ARC)
    rng = np.random.default_rng(1)
    people = unit(rng, 3, 512)
    for i, v in enumerate(people):
        g.add(f"p{i}", v[None] * 3.0)  # scale must not matter for cosine
    query = unit(rng, 4, 512)
    results = g.search(query, k=3)
    expected = query @ people.T
    for row, matches in zip(expected, results, strict=True):
        assert [m.name for m in matches] == [f"p{j}" for j in np.argsort(-row)]
        np.testing.assert_allclose([m.similarity for m in matches], np.sort(row)[::-1], atol=1e-5)
    g.close()


def test_search_returns_k_persons_not_k_points(gallery: Gallery) -> None:
    rng = np.random.default_rng(2)
    query = np.zeros((1, 128), np.float32)
    # 100 embeddings of one person all nearer than anyone else: a plain top-k would name only "crowd".
    gallery.add("crowd", rng.normal(scale=0.01, size=(100, 128)).astype(np.float32))
    gallery.add("second", np.full((1, 128), 0.05, np.float32))
    gallery.add("third", np.full((2, 128), 0.08, np.float32))
    (matches,) = gallery.search(query, k=3)
    assert [m.name for m in matches] == ["crowd", "second", "third"]
    assert matches[0].similarity > matches[1].similarity > matches[2].similarity
    assert matches[1].similarity == pytest.approx(1 - 0.05 * np.sqrt(128), abs=1e-4)
    (only,) = gallery.search(query, k=10)
    assert len(only) == 3  # fewer persons than k: all of them, once each


def test_person_similarity_is_a_soft_maximum_of_the_best_three() -> None:
    assert person_similarity(np.array([0.6])) == pytest.approx(0.6)
    assert person_similarity(np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    spread = np.log(3) / PERSON_SOFTNESS
    assert person_similarity(np.array([0.8, -1.0, -2.0])) == pytest.approx(0.8 - spread, abs=1e-9)
    # only the best PERSON_PHOTOS count, and rows are scored independently
    rows = np.array([[0.1, 0.8, 0.8, 0.8], [0.8, 0.8, 0.8, 0.1]])
    np.testing.assert_allclose(person_similarity(rows), [0.8, 0.8])
    assert PERSON_PHOTOS == 3


def test_person_score_is_person_similarity_in_python_floats() -> None:
    """The search's scalar person score and the array formula agree on thousands of random cases (ties,
    near ties, 1 to 6 values, far apart ones): exactly where numpy's exp and log are the C library's, to
    1e-12 anywhere (numpy's own SIMD exp may differ in the last bit)."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for case in range(5000):
        n = int(rng.integers(1, 7))
        values = rng.uniform(-1.0, 1.0, n) * (0.01 if case % 3 == 0 else 1.0)
        if case % 5 == 0:
            values[rng.integers(n)] = values[0]  # a tie
        values = np.round(values, int(rng.integers(2, 17))).tolist()
        worst = max(worst, abs(person_score(values) - float(person_similarity(np.array(values)))))
    assert worst <= 1e-12
    assert person_score([0.6]) == 0.6


def test_best_per_person_ranks_and_scores_as_the_array_formula() -> None:
    """best_per_person's fast path against the reference (person_similarity of each name's best hits,
    stably sorted best first), with names repeating, equal scores and every k."""
    rng = np.random.default_rng(11)
    for _ in range(2000):
        names = [f"p{i}" for i in range(int(rng.integers(1, 10)))]
        hits = [(str(rng.choice(names)), float(np.round(rng.random(), int(rng.integers(1, 17)))))
                for _ in range(int(rng.integers(1, 40)))]  # fmt: skip
        hits.sort(key=lambda hit: -hit[1])
        by_name: dict[str, list[float]] = {}
        for name, value in hits:
            by_name.setdefault(name, []).append(value)
        top = {name: np.array(v[:PERSON_PHOTOS]) for name, v in by_name.items()}
        scores = [(name, float(person_similarity(v))) for name, v in top.items()]
        want = sorted(scores, key=lambda item: -item[1])
        for k in (1, 2, 3):
            got, settled = best_per_person(hits, k)
            assert settled
            assert [m.name for m in got] == [name for name, _ in want[:k]]
            assert [m.similarity for m in got] == pytest.approx([v for _, v in want[:k]], abs=1e-12, rel=0)
    scores = rng.uniform(0.0, 2.0, 50).tolist()
    assert similarities_from_scores(scores, "euclidean") == [1.0 - s for s in scores]
    assert similarities_from_scores(scores, "cosine") == scores


def test_search_fetches_a_chosen_persons_other_photos_beyond_the_first_points(gallery: Gallery) -> None:
    """Alice's best photo is the nearest point, her other two are behind 60 strangers: the first fetch (32
    points) sees one of her three, so the search asks for more before scoring her."""
    axes = np.eye(128, dtype=np.float32)
    gallery.add("alice", np.stack([axes[0] * 0.2, axes[1] * 0.9, axes[2] * 0.95]))
    for i in range(60):
        gallery.add(f"s{i:02d}", (axes[3 + i] * (0.3 + 0.008 * i))[None])
    (matches,) = gallery.search(np.zeros((1, 128), np.float32), k=2)
    expected = float(person_similarity(np.array([0.8, 0.1, 0.05])))
    assert [m.name for m in matches] == ["alice", "s00"]
    assert matches[0].similarity == pytest.approx(expected, abs=1e-4)
    assert matches[0].similarity < 0.8 - 0.02  # her far photos count against her
    assert matches[1].similarity == pytest.approx(0.7, abs=1e-4)


def test_search_batch_and_empty(gallery: Gallery) -> None:
    assert gallery.search(np.zeros((2, 128), np.float32)) == [[], []]
    rng = np.random.default_rng(3)
    people = rng.normal(size=(5, 128)).astype(np.float32)
    for i, v in enumerate(people):
        gallery.add(f"p{i}", v)
    results = gallery.search(people + 0.01, k=1)
    assert [r[0].name for r in results] == [f"p{i}" for i in range(5)]
    assert all(isinstance(r[0], Match) and r[0].similarity > 0.8 for r in results)
    with pytest.raises(ValueError):
        gallery.search(people, k=0)


def test_bad_input_leaves_gallery_unchanged(gallery: Gallery) -> None:
    rng = np.random.default_rng(4)
    gallery.add("alice", rng.normal(size=(2, 128)).astype(np.float32))
    before = (gallery.list(), gallery.vectors("alice"))
    bad = rng.normal(size=(3, 128)).astype(np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(ValueError):
        gallery.add("bob", bad)
    with pytest.raises(ValueError):
        gallery.add("bob", rng.normal(size=(2, 64)))
    with pytest.raises(ValueError):
        gallery.add("bob", bad[:2], meta=[{"source": "x"}])
    with pytest.raises(ValueError):
        gallery.add("bob", bad[:1], meta={"name": "mallory"})
    with pytest.raises(UserError):
        gallery.add(" ", bad[:1])
    assert gallery.list() == before[0]
    np.testing.assert_array_equal(gallery.vectors("alice"), before[1])


def test_reopen_and_model_mismatch(engine: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(2, 128)).astype(np.float32)
    g = open_engine(engine, tmp_path, DLIB)
    g.add("alice", vectors)
    g.close()
    with pytest.raises(GalleryMismatchError) as excinfo:
        open_engine(engine, tmp_path, ARC)
    message = str(excinfo.value)
    assert "\n" not in message
    assert (
        f"was built with embedder {DLIB.model_id} (dim 128); this run uses {ARC.model_id} (dim 512" in message
    )
    assert "FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION or re-enroll" in message
    # Same dim, other model file: refused too (another network's space).
    with pytest.raises(GalleryMismatchError):
        open_engine(engine, tmp_path, Spec("dlib-ffffffffffff", 128, "euclidean"))
    g = open_engine(engine, tmp_path, DLIB)  # the refusals changed nothing
    assert g.list() == {"alice": 2}
    np.testing.assert_allclose(np.sort(g.vectors("alice"), axis=0), np.sort(vectors, axis=0))
    g.close()


def test_nothing_written_before_first_add(tmp_path: Path) -> None:
    g = open_engine("edge", tmp_path, DLIB)
    assert g.list() == {} and g.search(np.zeros((1, 128), np.float32)) == [[]]
    assert g.info().count == 0
    g.close()
    assert not (tmp_path / "gallery").exists()


def test_edge_layout_records_embedder(tmp_path: Path) -> None:
    import json

    g = open_engine("edge", tmp_path, DLIB)
    g.add("alice", np.ones((1, 128), np.float32))
    g.close()
    folder = tmp_path / "gallery" / "faces"
    record = json.loads((folder / "gallery.json").read_text())
    assert (record["model_id"], record["dim"], record["metric"]) == (DLIB.model_id, 128, "euclidean")
    assert record["format"] == 2 and record["shard"].startswith("shard-")
    assert (folder / record["shard"] / "edge_config.json").is_file()
    assert record["integrity"]["count"] == 1 and len(record["integrity"]["sample_ids"]) == 1


def test_server_records_embedder_in_collection_metadata(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    g = ServerGallery(client, "people", ARC, where="memory")
    g.add("alice", np.ones((1, 512), np.float32))
    config = client.get_collection("people").config
    assert config.metadata["face_gallery"]["model_id"] == ARC.model_id
    assert config.params.vectors.size == 512 and config.params.vectors.distance.value == "Cosine"
    # A collection this gallery did not make is refused, not silently used.
    client.create_collection("foreign", vectors_config=config.params.vectors)
    with pytest.raises(UserError, match="not made by this gallery"):
        ServerGallery(client, "foreign", ARC)
    g.close()


def test_edge_second_open_in_same_process_is_refused(tmp_path: Path) -> None:
    g = open_engine("edge", tmp_path, DLIB)
    g.add("alice", np.ones((1, 128), np.float32))
    with pytest.raises(UserError, match="in use by another process"):
        open_engine("edge", tmp_path, DLIB)
    g.close()
    again = open_engine("edge", tmp_path, DLIB)  # released on close
    assert again.list() == {"alice": 1}
    again.close()


def test_edge_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "faces").write_text("not a gallery")
    with pytest.raises(UserError, match="is a file"):
        open_engine("edge", tmp_path, DLIB)


def test_open_without_spec_adopts_the_stored_embedder(engine: str, tmp_path: Path) -> None:
    fresh = open_engine(engine, tmp_path, None)  # type: ignore[arg-type]
    assert fresh.list() == {} and fresh.info().count == 0 and fresh.search(np.zeros((2, 8))) == [[], []]
    with pytest.raises(UserError, match="enroll with an embedder model"):
        fresh.add("alice", np.ones((1, 128), np.float32))
    fresh.close()
    g = open_engine(engine, tmp_path, ARC)
    g.add("alice", np.ones((2, 512), np.float32))
    g.close()
    reader = open_engine(engine, tmp_path, None)  # type: ignore[arg-type]
    info = reader.info()
    assert (info.model_id, info.dim, info.metric, info.count) == (ARC.model_id, 512, "cosine", 2)
    assert reader.search(np.ones((1, 512), np.float32))[0][0].name == "alice"
    assert reader.remove("alice") == 2 and reader.list() == {}
    reader.close()


def test_unreachable_server_is_a_one_line_user_error(tmp_path: Path) -> None:
    settings = Settings(qdrant_host="127.0.0.1", qdrant_port=1, qdrant_collection="faces")
    with pytest.raises(UserError) as excinfo:
        open_gallery(settings, DLIB)
    message = str(excinfo.value)
    assert (
        "\n" not in message
        and "http://127.0.0.1:1 collection 'faces'" in message
        and "QDRANT_HOST" in message
    )
