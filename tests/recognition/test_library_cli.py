"""The face library commands of `python -m app.enroll` on a real embedded gallery and unknowns store:
tables and JSON, naming a cluster, gallery management, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from app import enroll
from app.config import Settings, env_name, load_settings
from app.gallery import open_gallery
from app.gallery.unknowns import open_unknowns
from app.inference.spec import embedder_spec_for
from tests.support.unknowns import person_centres, sighting_of

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in Settings.__dataclass_fields__:
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the caller


@pytest.fixture
def spec():
    return embedder_spec_for(EMBEDDER)


@pytest.fixture
def gallery_dir(tmp_path):
    return tmp_path / "gallery"


def settings_of(gallery_dir: Path) -> Settings:
    return load_settings({"qdrant_path": str(gallery_dir), "embedder_model": str(EMBEDDER)}, env_file=None)


def cli(capsys, gallery_dir: Path, *args: str) -> tuple[int, str, str]:
    code = enroll.main([*args, "--gallery", str(gallery_dir), "--embedder-model", str(EMBEDDER)])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(gallery_dir: Path) -> dict[str, object]:
    """What the gallery and the unknowns hold (points, payloads, crops, cluster ids), for 'nothing was
    written' checks; the engine's own files change on a mere open, so they are not compared byte by byte."""
    settings = settings_of(gallery_dir)
    with open_gallery(settings, None) as gallery:
        points = [(i, p) for i, p, _ in gallery.points()]
    with open_unknowns(settings, None) as store:
        faces = store.faces()
        extra = {
            str(p.relative_to(store.folder)): p.read_bytes()
            for p in sorted(store.folder.rglob("*"))
            if p.is_file() and (p.parent.name == "crops" or p.name == "clusters.json")
        }
    return {"points": points, "faces": faces, "files": extra}


@pytest.fixture
def unknowns(gallery_dir, spec):
    """Two repeat visitors (3 visits each) and one passer-by seen once."""
    rng = np.random.default_rng(0)
    centres = person_centres(3, seed=1)
    sightings = {0: [], 1: [], 2: []}
    with open_unknowns(settings_of(gallery_dir), spec) as store:
        for person, visits in ((0, 3), (1, 3), (2, 1)):
            for v in range(visits):
                s = sighting_of(
                    centres[person], 4, 1_700_000_000.0 + 1000 * v + person, rng, track=10 * person + v
                )
                store.add(s)
                sightings[person].append(s.id)
    return sightings


def enroll_vectors(gallery_dir, spec, name, count, seed=0):
    vectors = person_centres(count + 5, seed)[5:]
    with open_gallery(settings_of(gallery_dir), spec) as gallery:
        gallery.add(name, vectors, [{"source": f"photo{i}.jpg"} for i in range(count)])


def test_unknowns_list_shows_repeat_visitors_then_single_sightings(capsys, gallery_dir, unknowns):
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "list", "--json")
    assert code == 0
    clusters = json.loads(out)
    assert [(c["faces"], c["visits"]) for c in clusters] == [(12, 3), (12, 3), (4, 1)]
    for c in clusters:
        assert {"id", "faces", "first_seen", "last_seen", "cameras"} <= set(c)
        assert c["cameras"] == ["cam1"]
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "list")
    assert "repeat visitors:" in out and "seen once:" in out and "first_seen" in out


def test_naming_a_cluster_enrolls_its_faces_and_drops_them_from_the_unknowns(
    capsys, gallery_dir, unknowns, spec
):
    cli(capsys, gallery_dir, "unknowns", "list", "--json")
    with open_unknowns(settings_of(gallery_dir), spec) as store:
        ids, _ = store.load_clusters()
    target = ids[unknowns[0][0]]
    others = {ids[unknowns[1][0]], ids[unknowns[2][0]]}
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "name", str(target), "Ann Lee", "--json")
    assert code == 0 and json.loads(out)["added"] == 10
    with open_gallery(settings_of(gallery_dir), spec) as gallery:
        assert gallery.list() == {"Ann Lee": 10}
        sources = {p[1]["source"] for p in gallery.points("Ann Lee")}
    assert sources == {f"unknowns:{s}" for s in unknowns[0]}  # the best faces of every visit
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "list", "--json")
    assert {c["id"] for c in json.loads(out)} == others  # the other ids did not move


def test_naming_a_missing_cluster_is_one_line_and_changes_nothing(capsys, gallery_dir, unknowns):
    cli(capsys, gallery_dir, "unknowns", "list")
    before = snapshot(gallery_dir)
    code, out, err = cli(capsys, gallery_dir, "unknowns", "name", "99", "Bob")
    assert code == 2 and err.startswith("error: no unknowns cluster 99") and err.count("\n") == 1
    assert snapshot(gallery_dir) == before


def test_a_name_with_control_characters_is_refused(capsys, gallery_dir, unknowns):
    cli(capsys, gallery_dir, "unknowns", "list")
    before = snapshot(gallery_dir)
    code, _, err = cli(capsys, gallery_dir, "unknowns", "name", "1", "Bo\x1bb")
    assert code == 2 and "control characters" in err and err.count("\n") == 1
    assert snapshot(gallery_dir) == before


def test_show_writes_a_sheet_and_never_overwrites(capsys, gallery_dir, unknowns, tmp_path):
    cli(capsys, gallery_dir, "unknowns", "list")
    sheet = tmp_path / "sheet.jpg"
    code, _, _ = cli(capsys, gallery_dir, "unknowns", "show", "1", "--output", str(sheet))
    assert code == 0 and sheet.stat().st_size > 1000
    first = sheet.read_bytes()
    code, _, err = cli(capsys, gallery_dir, "unknowns", "show", "2", "--output", str(sheet))
    assert code == 2 and "already exists" in err and sheet.read_bytes() == first


def test_show_with_a_crop_missing_is_one_line_and_writes_nothing(
    capsys, gallery_dir, unknowns, spec, tmp_path
):
    cli(capsys, gallery_dir, "unknowns", "list")
    with open_unknowns(settings_of(gallery_dir), spec) as store:
        ids, _ = store.load_clusters()
        face = next(f for f in store.faces() if f.sighting == unknowns[0][1])
        (store.crops / face.crop).unlink()
    sheet = tmp_path / "sheet.jpg"
    code, _, err = cli(
        capsys, gallery_dir, "unknowns", "show", str(ids[unknowns[0][1]]), "--output", str(sheet)
    )
    assert code == 2 and "is missing" in err and err.count("\n") == 1
    assert not sheet.exists()


def test_unknowns_of_another_embedder_are_refused(capsys, gallery_dir):
    @dataclasses.dataclass(frozen=True)
    class Other:
        model_id: str = "arcface-123"
        dim: int = 512
        metric: str = "cosine"

    rng = np.random.default_rng(0)
    with open_unknowns(settings_of(gallery_dir), Other()) as store:
        s = sighting_of(np.zeros(128, np.float32), 2, 1.0, rng)
        for face in s.faces:
            face.vector = np.resize(face.vector, 512)
        store.add(s)
    code, _, err = cli(capsys, gallery_dir, "unknowns", "list")
    assert code == 2 and "kept with embedder arcface-123" in err and err.count("\n") == 1
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "forget", "--all", "--json")
    assert code == 0 and json.loads(out)["removed"] == 2
    assert cli(capsys, gallery_dir, "unknowns", "list", "--json")[1].strip() == "[]"


def test_forget_a_cluster_or_by_age(capsys, gallery_dir, unknowns):
    cli(capsys, gallery_dir, "unknowns", "list")
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "forget", "3", "--json")
    assert code == 0 and json.loads(out) == {"removed": 4, "visits": 1}
    code, out, _ = cli(capsys, gallery_dir, "unknowns", "forget", "--older-than", "1", "--json")
    assert json.loads(out)["removed"] == 24  # seen in 2023
    code, _, err = cli(capsys, gallery_dir, "unknowns", "forget")
    assert code == 2 and "exactly one of" in err


def test_list_details_and_removing_one_embedding(capsys, gallery_dir, spec):
    enroll_vectors(gallery_dir, spec, "ann", 3)
    code, out, _ = cli(capsys, gallery_dir, "list", "--details", "--json")
    entries = json.loads(out)["persons"]["ann"]
    assert [e["source"] for e in entries] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    code, out, _ = cli(capsys, gallery_dir, "list", "--details")
    assert entries[0]["id"] in out and "photo1.jpg" in out
    code, out, _ = cli(capsys, gallery_dir, "remove", "ann", "--embedding", entries[1]["id"], "--json")
    assert code == 0 and json.loads(out)["embeddings"] == 2
    before = snapshot(gallery_dir)
    code, _, err = cli(capsys, gallery_dir, "remove", "ann", "--embedding", "nope")
    assert code == 2 and "has no embedding 'nope'" in err
    assert snapshot(gallery_dir) == before


def test_rename_keeps_every_embedding_and_refuses_a_taken_name(capsys, gallery_dir, spec):
    enroll_vectors(gallery_dir, spec, "ann", 3)
    enroll_vectors(gallery_dir, spec, "bob", 1, seed=2)
    code, out, _ = cli(capsys, gallery_dir, "rename", "ann", "Ann Lee", "--json")
    assert code == 0 and json.loads(out)["embeddings"] == 3
    with open_gallery(settings_of(gallery_dir), spec) as gallery:
        assert gallery.list() == {"Ann Lee": 3, "bob": 1}
        assert {p[1]["renamed_from"] for p in gallery.points("Ann Lee")} == {"ann"}
    code, _, err = cli(capsys, gallery_dir, "rename", "bob", "Ann Lee")
    assert code == 2 and "already in gallery" in err


def test_export_then_import_into_another_gallery(capsys, gallery_dir, spec, tmp_path):
    enroll_vectors(gallery_dir, spec, "ann", 3)
    export = tmp_path / "gallery.json"
    code, out, _ = cli(capsys, gallery_dir, "export", str(export), "--json")
    assert code == 0 and json.loads(out)["embeddings"] == 3
    code, _, err = cli(capsys, gallery_dir, "export", str(export))
    assert code == 2 and "already exists" in err
    other = tmp_path / "other"
    code, out, _ = cli(capsys, other, "import", str(export), "--json")
    assert code == 0 and json.loads(out) == {"file": str(export), "persons": 1, "embeddings": 3}
    with open_gallery(settings_of(gallery_dir), spec) as a, open_gallery(settings_of(other), spec) as b:
        assert np.allclose(a.vectors("ann"), b.vectors("ann"), atol=1e-6)
    code, _, err = cli(capsys, other, "import", str(export))
    assert code == 2 and "already in gallery" in err


def test_import_refuses_another_embedder(capsys, gallery_dir, tmp_path):
    point = {"name": "ann", "vector": [1.0, 0.0], "meta": {}}
    doc = {
        "format": "face-gallery-export",
        "version": 1,
        "model_id": "arcface-x",
        "dim": 2,
        "metric": "cosine",
    }
    doc["points"] = [point]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    code, _, err = cli(capsys, gallery_dir, "import", str(path))
    assert code == 2 and "holds embeddings of arcface-x" in err and err.count("\n") == 1
    assert not gallery_dir.exists()


def test_every_library_command_has_json():
    parser = enroll.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name, sub in commands.items():
        if name == "unknowns":
            for action_name, action in sub._subparsers._group_actions[0].choices.items():  # noqa: SLF001
                assert "--json" in action.format_help(), action_name
        else:
            assert "--json" in sub.format_help(), name
