"""`python -m app.enroll` on a damaged gallery, with a wrong embedder file and with unprintable names: one
line, exit 2, the gallery unchanged; verify, backup and restore through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_enroll import MODELS, REPO, TRAIN, assert_one_line_error, assert_same, run_cli, snapshot

pytestmark = pytest.mark.slow

OBAMA = TRAIN / "obama" / "obama.jpg"


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    folder = tmp_path / "gallery"
    result = run_cli("add", "obama", OBAMA, "--gallery", folder, *MODELS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return folder


def vector_chunk(folder: Path) -> Path:
    collection = folder / "faces"
    shard = json.loads((collection / "gallery.json").read_text())["shard"]
    (chunk,) = (collection / shard).glob("segments/*/vector_storage/vectors/chunk_0.mmap")
    return chunk


def test_a_damaged_gallery_is_one_line_everywhere_and_restore_repairs_it(tmp_path, gallery):
    backed = run_cli("backup", tmp_path / "bk", "--gallery", gallery, cwd=tmp_path)
    assert backed.returncode == 0 and backed.stdout.startswith(f"backed up {gallery / 'faces'} to "), (
        backed.stderr
    )
    chunk = vector_chunk(gallery)
    with open(chunk, "r+b") as handle:
        handle.write(bytes(65536))  # zeroed: still readable, but every vector is 0
    for args in (("list",), ("identify", OBAMA, *MODELS), ("add", "biden", TRAIN / "biden", *MODELS)):
        result = run_cli(*args, "--gallery", gallery, cwd=tmp_path)
        assert_one_line_error(result, f"gallery at {gallery / 'faces'} is damaged", "enroll restore DIR")
    verify = run_cli("verify", "--gallery", gallery, cwd=tmp_path)
    assert_one_line_error(verify, "is damaged: vectors (1 embedding(s) are not 128 finite, non-zero values)")
    restored = run_cli("restore", tmp_path / "bk", "--gallery", gallery, cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert (
        restored.stdout
        == f"restored {gallery / 'faces'} from {tmp_path / 'bk'}: 1 person(s), 1 embedding(s)\n"
    )
    verify = run_cli("verify", "--gallery", gallery, cwd=tmp_path)
    assert verify.returncode == 0 and "is intact: 1 person(s), 1 embedding(s), checksum ok" in verify.stdout
    identified = run_cli("identify", OBAMA, "--json", "--gallery", gallery, *MODELS, cwd=tmp_path)
    face = json.loads(identified.stdout)["images"][0]["faces"][0]
    assert face["name"] == "obama" and face["similarity"] > 0.9


def test_a_detector_given_as_the_embedder_is_named_before_anything_is_written(tmp_path):
    detector = REPO / "checkpoints" / "retinaface_mnet025.onnx"
    for kind in ("auto", "dlib", "arcface"):
        result = run_cli(
            "add", "obama", OBAMA, "--gallery", tmp_path / "g", "--embedder-model", detector,
            "--embedder", kind, "--detector-model", detector, cwd=tmp_path,
        )  # fmt: skip
        assert_one_line_error(result, f"{detector} is not a face embedder", "--embedder-model")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("name", ["line\nbreak", "esc\x1b[31mred", "tab\there", "bell\x07", "rtl\u202eover"])
def test_names_with_control_characters_are_refused_by_every_command(tmp_path, gallery, name):
    before = snapshot(gallery)
    add = run_cli("add", name, OBAMA, "--gallery", gallery, *MODELS, cwd=tmp_path)
    assert_one_line_error(add, "contains control characters (U+")
    remove = run_cli("remove", name, "--gallery", gallery, cwd=tmp_path)
    assert_one_line_error(remove, "contains control characters (U+")
    assert_same(before, snapshot(gallery))
    listing = run_cli("list", "--gallery", gallery, cwd=tmp_path)
    assert listing.stdout.splitlines()[1:] == ["  obama  1"]


def test_a_name_with_unicode_letters_is_fine(tmp_path, gallery):
    result = run_cli(
        "add", "Zoë Ångström-李", TRAIN / "biden" / "biden.jpg", "--gallery", gallery, *MODELS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_identify_never_writes_over_an_image_or_an_existing_file(tmp_path, gallery):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(OBAMA.read_bytes())
    original = photo.read_bytes()
    result = run_cli(
        "identify", photo, "--output", photo, "--overwrite", "--gallery", gallery, *MODELS, cwd=tmp_path
    )
    assert_one_line_error(result, "writing it would destroy the input")
    kept = tmp_path / "kept.jpg"
    kept.write_bytes(b"mine")
    result = run_cli("identify", photo, "--output", kept, "--gallery", gallery, *MODELS, cwd=tmp_path)
    assert_one_line_error(result, "already exists: choose another name, or pass --overwrite")
    assert photo.read_bytes() == original and kept.read_bytes() == b"mine"
    result = run_cli(
        "identify", photo, "--output", kept, "--overwrite", "--gallery", gallery, *MODELS, cwd=tmp_path
    )
    assert result.returncode == 0 and kept.read_bytes()[:2] == b"\xff\xd8", result.stderr
