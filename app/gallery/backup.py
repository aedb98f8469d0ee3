"""`enroll backup DIR` / `enroll restore DIR`: a gallery as plain files, checked both ways.

A backup folder holds `backup.json` (the embedder record, the number of embeddings and the checksum of
`integrity.py`) and `points.jsonl` (one point a line: id, payload, vector). It is the same for both engines,
so a backup of the embedded gallery restores into a Qdrant server collection and back.

A backup is made only of a gallery that verifies, written to a hidden folder next to DIR and renamed to DIR
when complete; it never writes into a folder that holds anything. A restore checks the backup's checksum
first; into the embedded gallery it is one copy-on-write commit (a crash leaves the gallery as it was), into
a server collection it recreates the collection (run it again if it was interrupted).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.errors import UserError, first_line
from app.gallery.base import GalleryRecord, QdrantGalleryBase
from app.gallery.factory import gallery_location, open_gallery
from app.gallery.integrity import IntegrityRecord, VerifyReport
from app.gallery.storage_files import fsync_dir

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

BACKUP_FILE = "backup.json"
POINTS_FILE = "points.jsonl"
BACKUP_FORMAT = 1


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    count: int
    persons: int

    def describe(self) -> str:
        return f"{self.persons} person(s), {self.count} embedding(s)"


def backup_gallery(settings: Settings, dest: Path, client: QdrantClient | None = None) -> BackupSummary:
    """Verify the gallery of `settings` (or of an injected qdrant-client) and write it to the new folder
    `dest`."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"backup folder {dest} exists and is not empty: name a new folder")
    gallery = open_gallery(settings, None, client=client)
    try:
        assert isinstance(gallery, QdrantGalleryBase)
        report = gallery.verify()  # raises (naming the damage) before anything is written
        record = gallery.record
        assert record is not None
        points = list(gallery.points(with_vectors=True))
    finally:
        gallery.close()
    integrity = IntegrityRecord.of(points)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        with open(partial / POINTS_FILE, "w", encoding="utf-8") as handle:
            for point_id, payload, vector in points:
                row = {"id": str(point_id), "payload": payload, "vector": [float(v) for v in vector]}
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        manifest = {
            "format": BACKUP_FORMAT,
            "record": record.as_dict(),
            "count": integrity.count,
            "digest": integrity.digest,
            "source": gallery_location(settings),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (partial / BACKUP_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_dir(partial)
        if dest.is_dir():
            dest.rmdir()  # empty, checked above
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupSummary(dest, report.count, report.persons)


def read_backup(src: Path) -> tuple[GalleryRecord, list[tuple[str, list[float], dict[str, Any]]]]:
    """The record and points of a backup folder, after checking its count and checksum."""
    src = Path(src)
    manifest_path = src / BACKUP_FILE
    if not manifest_path.is_file():
        raise UserError(
            f"{src} is not a gallery backup (no {BACKUP_FILE}): name the folder `enroll backup` made"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        record = GalleryRecord.from_mapping(manifest["record"], str(src))
        points = []
        with open(src / POINTS_FILE, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                points.append((str(row["id"]), [float(v) for v in row["vector"]], dict(row["payload"])))
        count, digest = int(manifest["count"]), str(manifest["digest"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"backup {src} cannot be read ({first_line(exc)}): use another backup") from None
    check = IntegrityRecord.of((i, p, v) for i, v, p in points)
    if check.count != count or check.digest != digest:
        raise UserError(
            f"backup {src} is damaged: its {check.count} embeddings do not match the checksum it "
            f"recorded for {count}; use another backup"
        )
    if any(len(v) != record.dim for _, v, _ in points):
        raise UserError(f"backup {src} holds vectors that are not {record.dim}-d: use another backup")
    return record, points


def restore_gallery(settings: Settings, src: Path, client: QdrantClient | None = None) -> BackupSummary:
    """Replace the gallery of `settings` (whatever it holds, damaged or not) by the backup at `src`."""
    record, points = read_backup(src)
    persons = len({str(p.get("name")) for _, _, p in points})
    if settings.qdrant_host or client is not None:
        _restore_to_server(settings, record, points, client)
    else:
        from app.gallery.edge import EdgeGallery

        gallery = EdgeGallery(settings.qdrant_path / settings.qdrant_collection, record, load=False)
        try:
            gallery.replace_points(points)
        finally:
            gallery.close()
    return BackupSummary(Path(src), len(points), persons)


def _restore_to_server(
    settings: Settings,
    record: GalleryRecord,
    points: list[tuple[str, list[float], dict[str, Any]]],
    client: QdrantClient | None,
) -> None:
    from qdrant_client import models

    from app.gallery.server import ServerGallery

    gallery = open_gallery(settings, None, client=client)
    assert isinstance(gallery, ServerGallery)
    gallery.record = record
    try:
        with gallery._engine_errors("restore"):
            if gallery.client.collection_exists(gallery.collection):
                gallery.client.delete_collection(gallery.collection)
            gallery._exists = False
            gallery._create()
            for start in range(0, len(points), 1024):
                batch = [
                    models.PointStruct(id=i, vector=v, payload=p) for i, v, p in points[start : start + 1024]
                ]
                gallery.client.upsert(gallery.collection, points=batch, wait=True)
    finally:
        gallery.close()


def verify_gallery(settings: Settings, client: QdrantClient | None = None) -> VerifyReport:
    """The full check behind `enroll verify`: the gallery opened without its quick check, then read whole."""
    if settings.qdrant_host or client is not None:
        gallery: QdrantGalleryBase = open_gallery(settings, None, client=client)  # type: ignore[assignment]
    else:
        from app.gallery.edge import EdgeGallery

        folder = settings.qdrant_path / settings.qdrant_collection
        if not (folder / "gallery.json").is_file():
            raise UserError(
                f"no gallery at {folder}: enroll someone first, or check "
                "FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION"
            )
        gallery = EdgeGallery(folder, None, check=False)
    try:
        return gallery.verify()
    finally:
        gallery.close()
