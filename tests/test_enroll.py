"""`python -m app.enroll` end to end in subprocesses: enrol, identify, list, remove, and the error cases,
each of which must print one line, exit 2 and leave the gallery exactly as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import Settings, env_name
from app.gallery import open_gallery
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[1]
TRAIN = SHARED_FACES / "knn_examples" / "train"
TEST = SHARED_FACES / "knn_examples" / "test"
PEOPLE = ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
MODELS = [
    "--detector-model",
    str(REPO / "checkpoints" / "retinaface_mnet025.onnx"),
    "--embedder-model",
    str(REPO / "checkpoints" / "dlib_resnet.onnx"),
]

pytestmark = pytest.mark.slow  # each case starts the CLI (and its models) in a new process


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a clean environment: no settings from the caller's env or a .env (cwd is a temp dir)."""
    env = {
        k: v for k, v in os.environ.items() if k not in {env_name(f) for f in Settings.__dataclass_fields__}
    }
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "app.enroll", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Snapshot:
    persons: dict[str, int]
    vectors: dict[str, np.ndarray]


def snapshot(folder: Path) -> Snapshot:
    """Persons and vectors (rows sorted) of a gallery, opened with whatever embedder built it, then closed."""
    gallery = open_gallery(Settings(qdrant_path=folder), None)
    try:
        persons = gallery.list()
        vectors = {name: np.sort(gallery.vectors(name), axis=0) for name in persons}
    finally:
        gallery.close()
    return Snapshot(persons, vectors)


def assert_same(before: Snapshot, after: Snapshot) -> None:
    assert after.persons == before.persons
    for name, vectors in before.vectors.items():
        np.testing.assert_array_equal(after.vectors[name], vectors)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gallery with the five knn_examples people, enrolled through the CLI."""
    work = tmp_path_factory.mktemp("enroll")
    for person in PEOPLE:
        result = run_cli("add", person, TRAIN / person, "--gallery", work / "gallery", *MODELS, cwd=work)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"enrolled {person}: ")
    return work


def test_list_in_a_new_process(workdir: Path) -> None:
    result = run_cli("list", "--json", "--gallery", workdir / "gallery", cwd=workdir)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["persons"] == {
        "alex_lacamoire": 1,
        "biden": 2,
        "kit_harington": 2,
        "obama": 2,
        "rose_leslie": 2,
    }
    assert (doc["dim"], doc["metric"], doc["count"]) == (128, "euclidean", 9)
    assert doc["model_id"].startswith("dlib-")
    text = run_cli("list", "--gallery", workdir / "gallery", cwd=workdir)
    assert "5 person(s), 9 embedding(s)" in text.stdout and "  kit_harington   2\n" in text.stdout


def test_identify_json_names_every_enrolled_face(workdir: Path) -> None:
    images = [
        TEST,
        SHARED_FACES / "two_people.jpg",
        *(SHARED_FACES / f"obama-{s}.jpg" for s in ("240p", "1080p")),
    ]
    result = run_cli("identify", *images, "--json", "--gallery", workdir / "gallery", *MODELS, cwd=workdir)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    threshold = doc["threshold"]
    by_name = {Path(item["path"]).name: item for item in doc["images"]}
    expected = {
        "alex_lacamoire1.jpg": ["alex_lacamoire"],
        "johnsnow_test1.jpg": ["kit_harington"],
        "kit_with_rose.jpg": ["kit_harington", "rose_leslie"],
        "obama1.jpg": ["obama"],
        "obama_and_biden.jpg": ["biden", "obama"],
        "obama-240p.jpg": ["obama"],
        "obama-1080p.jpg": ["obama"],
    }
    for image, names in expected.items():
        faces = by_name[image]["faces"]
        assert sorted(f["name"] for f in faces if f["name"] != "unknown") == names, (image, faces)
        for face in faces:
            assert (face["similarity"] >= threshold) == (face["name"] != "unknown")
            assert len(face["box"]) == 4 and 0 < face["score"] <= 1
    assert len(by_name["two_people.jpg"]["faces"]) == 2


def test_identify_writes_annotated_image(workdir: Path) -> None:
    out = workdir / "out" / "annotated.jpg"
    source = TEST / "kit_with_rose.jpg"
    result = run_cli(
        "identify", source, "--output", out, "--gallery", workdir / "gallery", *MODELS, cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert "rose_leslie" in result.stdout and "kit_harington" in result.stdout
    annotated, original = cv2.imread(str(out)), cv2.imread(str(source))
    assert annotated.shape == original.shape
    assert np.abs(annotated.astype(int) - original.astype(int)).max() > 100  # something was drawn


def test_edge_images_identify_without_error(workdir: Path) -> None:
    edge = SHARED_FACES / "edge"
    images = [edge / "32bit.png", edge / "obama_partial_face.jpg", edge / "obama_partial_face2.jpg"]
    result = run_cli("identify", *images, "--json", "--gallery", workdir / "gallery", *MODELS, cwd=workdir)
    assert result.returncode == 0, result.stderr
    for item in json.loads(result.stdout)["images"]:
        assert {face["name"] for face in item["faces"]} <= {"obama", "unknown"}, item


@pytest.mark.parametrize("case", ["missing file", "non-image file", "model not ONNX"])
def test_error_leaves_gallery_unchanged(workdir: Path, case: str) -> None:
    gallery = workdir / "gallery"
    notes = workdir / "notes.txt"
    notes.write_text("not an image\n")
    fake_model = workdir / "fake.onnx"
    fake_model.write_bytes(b"definitely not a protobuf\x00\xff")
    good = SHARED_FACES / "obama-480p.jpg"
    args, phrases = {
        # A good image before the bad one: it is embedded first, and still nothing is written.
        "missing file": (["add", "obama", good, workdir / "missing.jpg"], ["missing.jpg does not exist"]),
        "non-image file": (["add", "obama", good, notes], ["notes.txt", "not a readable image"]),
        "model not ONNX": (
            ["add", "obama", good, *MODELS[:2], "--embedder-model", fake_model],
            ["fake.onnx", "ONNX"],
        ),
    }[case]
    before = snapshot(gallery)
    result = run_cli(*args, "--gallery", gallery, *(MODELS if case != "model not ONNX" else []), cwd=workdir)
    assert_one_line_error(result, *phrases)
    assert_same(before, snapshot(gallery))


def test_gallery_of_another_embedder_is_refused_and_unchanged(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class OtherSpec:
        model_id: str = "arcface-0123456789ab"
        dim: int = 512
        metric: str = "cosine"

    gallery = tmp_path / "gallery"
    other = open_gallery(Settings(qdrant_path=gallery), OtherSpec())
    other.add("someone", np.random.default_rng(0).normal(size=(2, 512)))
    other.close()
    before = snapshot(gallery)
    for command in (
        ["add", "obama", SHARED_FACES / "obama-480p.jpg"],
        ["identify", TEST / "obama1.jpg"],
    ):
        result = run_cli(*command, "--gallery", gallery, *MODELS, cwd=tmp_path)
        assert_one_line_error(
            result,
            f"gallery at {gallery / 'faces'} was built with embedder arcface-0123456789ab (dim 512)",
            "this run uses dlib-",
            "use another FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION or re-enroll",
        )
    assert_same(before, snapshot(gallery))
    # Another collection in the same folder is a separate gallery: the fix the message names works.
    image = SHARED_FACES / "obama-480p.jpg"
    fixed = run_cli(
        "add", "obama", image, "--gallery", gallery, "--collection", "dlib", *MODELS, cwd=tmp_path
    )
    assert fixed.returncode == 0, fixed.stderr
    assert_same(before, snapshot(gallery))


def test_gallery_held_by_another_process(workdir: Path) -> None:
    holder = open_gallery(Settings(qdrant_path=workdir / "gallery"), None)
    try:
        result = run_cli("list", "--gallery", workdir / "gallery", cwd=workdir)
    finally:
        holder.close()
    assert_one_line_error(result, "is in use by another process", f"pid {os.getpid()}")


def test_add_skips_group_photo_and_remove(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    group, single = TEST / "obama_and_biden.jpg", SHARED_FACES / "obama-720p.jpg"
    result = run_cli("add", "obama", group, single, "--gallery", gallery, *MODELS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"skipped {group}: 3 faces found, need exactly one" in result.stderr
    assert "enrolled obama: 1 embedding(s) from 1 image(s)" in result.stdout
    only_group = run_cli("add", "biden", group, "--gallery", gallery, *MODELS, cwd=tmp_path)
    assert_one_line_error(only_group, "holds exactly one face", "nothing enrolled")
    assert snapshot(gallery).persons == {"obama": 1}
    unknown = run_cli("remove", "nobody", "--gallery", gallery, cwd=tmp_path)
    assert_one_line_error(unknown, "no person named 'nobody'", "enrolled: obama")
    removed = run_cli("remove", "obama", "--gallery", gallery, cwd=tmp_path)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed obama: 1 embedding(s)"
    assert snapshot(gallery).persons == {}


def test_identify_on_empty_gallery_names_nobody(tmp_path: Path) -> None:
    result = run_cli(
        "identify", TEST / "obama1.jpg", "--json", "--gallery", tmp_path / "none", *MODELS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (face,) = json.loads(result.stdout)["images"][0]["faces"]
    assert face["name"] == "unknown" and face["similarity"] is None
    assert "is empty" in result.stderr
    assert not (tmp_path / "none").exists()  # identify never creates a gallery


def test_bad_option_value_is_one_line(tmp_path: Path) -> None:
    result = run_cli("identify", TEST / "obama1.jpg", "--threshold", "high", cwd=tmp_path)
    assert_one_line_error(result, "--threshold='high'")
