"""The gallery proves it is intact: damage is found on open and by verify, changes are all-or-nothing even
under kill -9, and backups restore it (embedded and server engines)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.config import Settings
from app.errors import UserError
from app.gallery import GalleryDamagedError, open_gallery
from app.gallery.backup import backup_gallery, restore_gallery, verify_gallery
from app.gallery.edge import EdgeGallery
from tests.support.child_process import kill_hard, python_child
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Spec:
    model_id: str
    dim: int
    metric: str


DLIB = Spec("dlib-0123456789ab", 128, "euclidean")


def settings_in(tmp_path: Path) -> Settings:
    return Settings(qdrant_path=tmp_path / "gallery", qdrant_collection="faces")


def folder_of(tmp_path: Path) -> Path:
    return tmp_path / "gallery" / "faces"


def make_gallery(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    people = {"alice": rng.normal(size=(3, 128)), "bob": rng.normal(size=(2, 128))}
    with open_gallery(settings_in(tmp_path), DLIB) as gallery:
        for name, vectors in people.items():
            gallery.add(name, vectors.astype(np.float32))
    return people


def contents(tmp_path: Path, settings: Settings | None = None) -> dict[str, list[tuple[float, ...]]]:
    with open_gallery(settings or settings_in(tmp_path), None) as gallery:
        return {name: sorted(map(tuple, gallery.vectors(name))) for name in gallery.list()}


def segment_file(tmp_path: Path, part: str) -> Path:
    record = json.loads((folder_of(tmp_path) / "gallery.json").read_text())
    (found,) = (folder_of(tmp_path) / record["shard"]).glob(f"segments/*/{part}")
    return found


DAMAGE = {
    "vector chunk truncated": ("vector_storage/vectors/chunk_0.mmap", "truncate"),
    "payload page truncated": ("payload_storage/page_0.dat", "truncate"),
    "vector chunk zeroed": ("vector_storage/vectors/chunk_0.mmap", "zero"),
}


def damage(tmp_path: Path, what: str) -> None:
    part, how = DAMAGE[what]
    path = segment_file(tmp_path, part)
    if how == "truncate":
        path.write_bytes(b"")
    else:
        with open(path, "r+b") as handle:
            handle.write(bytes(65536))


@pytest.mark.parametrize("what", sorted(DAMAGE))
def test_damaged_storage_is_found_on_open_and_named_by_verify(tmp_path, what):
    make_gallery(tmp_path)
    damage(tmp_path, what)
    with pytest.raises(GalleryDamagedError) as info:
        open_gallery(settings_in(tmp_path), None)
    message = str(info.value)
    assert message.startswith(f"gallery at {folder_of(tmp_path)} is damaged: ") and "\n" not in message
    assert "python -m app.enroll restore DIR" in message
    with pytest.raises(GalleryDamagedError) as info:
        verify_gallery(settings_in(tmp_path))
    part = "vector storage" if "vector" in what else "payload storage (names)"
    if what == "vector chunk zeroed":
        part = "vectors"  # readable, but all zeros
    assert f"is damaged: {part} (" in str(info.value)


def test_verify_reports_an_intact_gallery(tmp_path):
    make_gallery(tmp_path)
    report = verify_gallery(settings_in(tmp_path))
    assert report.line() == (
        f"gallery {folder_of(tmp_path)} is intact: 2 person(s), 5 embedding(s), checksum ok"
    )


def test_a_failing_add_leaves_the_gallery_as_before(tmp_path, monkeypatch):
    make_gallery(tmp_path)
    before = contents(tmp_path)
    gallery = open_gallery(settings_in(tmp_path), DLIB)
    import app.gallery.edge as edge_module

    def fail(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(edge_module, "write_json_atomically", fail)
    with pytest.raises(OSError, match="No space left"):
        gallery.add("carol", np.ones((2, 128), np.float32))
    assert gallery.list() == {"alice": 3, "bob": 2}  # the open gallery is the old one again
    gallery.close()
    monkeypatch.undo()
    assert contents(tmp_path) == before
    assert sorted(p.name for p in folder_of(tmp_path).iterdir() if p.name.startswith("shard")) == [
        json.loads((folder_of(tmp_path) / "gallery.json").read_text())["shard"]
    ]


# Adds person after person; after each add returns, writes the number of persons to the progress file.
ADD_LOOP = """
import os, sys
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from app.config import Settings
from app.gallery import open_gallery
@dataclass(frozen=True)
class Spec:
    model_id: str
    dim: int
    metric: str
root, progress = Path(sys.argv[1]), Path(sys.argv[2])
settings = Settings(qdrant_path=root, qdrant_collection="faces")
gallery = open_gallery(settings, Spec("dlib-0123456789ab", 128, "euclidean"))
start = len(gallery.list())
for i in range(start, start + 1000):
    gallery.add(f"p{i:04d}", np.full((2, 128), i + 1, np.float32))
    progress.with_suffix(".tmp").write_text(str(i + 1))
    os.replace(progress.with_suffix(".tmp"), progress)
"""


def test_add_killed_at_random_points_leaves_a_gallery_that_opens_as_before_or_after(tmp_path):
    make_gallery(tmp_path)
    progress = tmp_path / "progress"
    rng = random.Random(14)
    for _round in range(6):
        before = len(contents(tmp_path))
        progress.unlink(missing_ok=True)
        with python_child(ADD_LOOP, str(tmp_path / "gallery"), str(progress)) as child:
            wait_until(lambda: progress.exists() or child.poll() is not None, "the first add", poll_s=0.005)
            assert child.poll() is None, "the adding process ended by itself"
            time.sleep(rng.uniform(0.0, 0.25))  # lands anywhere inside a later add (copy, write, commit)
            kill_hard(child)
        committed = int(progress.read_text())  # persons in the gallery after the last add that returned
        after = contents(tmp_path)  # opens: the quick check passes
        assert len(after) in (committed, committed + 1)  # the add in flight is all there or not at all
        names = sorted(after)
        assert names[:2] == ["alice", "bob"] and names[2:] == [f"p{i:04d}" for i in range(2, len(after))]
        assert all(len(v) == 2 for n, v in after.items() if n.startswith("p"))  # no half-written add
        assert len(after) >= before
        assert verify_gallery(settings_in(tmp_path)).checksum == "ok"


def test_backup_and_restore_round_trip_even_over_a_damaged_gallery(tmp_path):
    make_gallery(tmp_path)
    before = contents(tmp_path)
    done = backup_gallery(settings_in(tmp_path), tmp_path / "bk")
    assert (done.count, done.persons) == (5, 2) and (tmp_path / "bk" / "backup.json").is_file()
    with pytest.raises(UserError, match="exists and is not empty: name a new folder"):
        backup_gallery(settings_in(tmp_path), tmp_path / "bk")
    damage(tmp_path, "vector chunk truncated")
    with pytest.raises(GalleryDamagedError):
        backup_gallery(settings_in(tmp_path), tmp_path / "bk2")  # a damaged gallery is not backed up
    assert not (tmp_path / "bk2").exists()
    restore_gallery(settings_in(tmp_path), tmp_path / "bk")
    assert contents(tmp_path) == before
    assert verify_gallery(settings_in(tmp_path)).checksum == "ok"


def test_a_damaged_backup_is_refused(tmp_path):
    make_gallery(tmp_path)
    backup_gallery(settings_in(tmp_path), tmp_path / "bk")
    lines = (tmp_path / "bk" / "points.jsonl").read_text().splitlines()
    (tmp_path / "bk" / "points.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match="backup .* is damaged"):
        restore_gallery(settings_in(tmp_path), tmp_path / "bk")


def test_server_engine_backup_restore_and_verify(tmp_path):
    make_gallery(tmp_path)
    backup_gallery(settings_in(tmp_path), tmp_path / "bk")
    local = str(tmp_path / "qdrant-local")
    restore_gallery(settings_in(tmp_path), tmp_path / "bk", client=QdrantClient(path=local))
    report = verify_gallery(settings_in(tmp_path), client=QdrantClient(path=local))
    assert (report.count, report.persons, report.checksum) == (5, 2, "not recorded")
    backup_gallery(settings_in(tmp_path), tmp_path / "bk-server", client=QdrantClient(path=local))
    restore_gallery(settings_in(tmp_path), tmp_path / "bk-server")
    assert contents(tmp_path)["alice"] == sorted(map(tuple, np.asarray(make_vectors()["alice"], np.float32)))


def make_vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"alice": rng.normal(size=(3, 128)), "bob": rng.normal(size=(2, 128))}


def test_a_gallery_of_the_first_format_opens_and_is_upgraded_by_its_next_change(tmp_path):
    folder = folder_of(tmp_path)
    gallery = EdgeGallery(folder, DLIB)
    gallery.add("alice", np.ones((1, 128), np.float32))
    gallery.close()
    record = json.loads((folder / "gallery.json").read_text())
    (folder / record["shard"]).rename(folder / "shard")  # the layout of format 1
    for key in ("shard", "integrity"):
        record.pop(key)
    (folder / "gallery.json").write_text(json.dumps({**record, "format": 1}))
    with EdgeGallery(folder, None) as old:
        assert old.list() == {"alice": 1}
        old.add("bob", np.ones((1, 128), np.float32))
    assert (
        json.loads((folder / "gallery.json").read_text())["format"] == 2 and not (folder / "shard").exists()
    )
    assert contents(tmp_path) == {"alice": [tuple([1.0] * 128)], "bob": [tuple([1.0] * 128)]}


def test_in_place_changes_drop_the_integrity_record_and_a_copied_change_brings_it_back(tmp_path):
    make_gallery(tmp_path)
    record_path = folder_of(tmp_path) / "gallery.json"
    shard = json.loads(record_path.read_text())["shard"]
    with open_gallery(settings_in(tmp_path), DLIB) as gallery:
        gallery.copy_on_write = False  # as the kept-unknowns store writes
        gallery.add("carol", np.ones((2, 128), np.float32))
        gallery.add("dave", np.ones((1, 128), np.float32))
    record = json.loads(record_path.read_text())
    assert "integrity" not in record and record["shard"] == shard  # no copy, no stale checksum
    assert verify_gallery(settings_in(tmp_path)).checksum == "not recorded"
    with open_gallery(settings_in(tmp_path), DLIB) as gallery:
        gallery.add("erin", np.ones((1, 128), np.float32))
    assert json.loads(record_path.read_text())["integrity"]["count"] == 9
    assert verify_gallery(settings_in(tmp_path)).checksum == "ok"
