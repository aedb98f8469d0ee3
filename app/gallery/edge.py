"""Embedded gallery: Qdrant's native engine in-process (qdrant-edge-py), one shard per collection folder.

Layout of `<qdrant_path>/<collection>/`:
  gallery.json   which embedder built it (model id, dim, metric), which shard folder is current, and the
                 integrity record of that shard (point count, checksums; see `integrity.py`)
  shard-<id>/    the current Qdrant edge shard (segments + write-ahead log); `shard/` in galleries of format 1
  .lock          flock held while a process has the gallery open (its pid inside, for the error message)
Nothing is written until the first `add`, so `identify`/`list` on a new path leave no empty gallery behind.

Every change (add, remove, optimize, restore) is copy-on-write: the current shard is copied (sparsely) to a
new folder, changed there, flushed and checksummed, and only then does an atomic replace of gallery.json
make it current. A failure or a kill -9 at any point leaves gallery.json naming the old, untouched shard;
leftover folders of an unfinished change are removed the next time the gallery is opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import qdrant_edge as qe

from app.errors import UserError, first_line
from app.gallery.base import (
    EmbedderIdentity,
    GalleryInUseError,
    GalleryRecord,
    QdrantGalleryBase,
)
from app.gallery.integrity import GalleryDamagedError, IntegrityRecord, damaged
from app.gallery.storage_files import sparse_copytree, write_json_atomically

try:
    import fcntl
except ImportError:  # Windows: Qdrant's own WAL lock still refuses a second opener
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RECORD_FILE = "gallery.json"
SHARD_DIR = "shard"
LOCK_FILE = ".lock"
SHARD_PREFIX = "shard-"
FORMAT_VERSION = 2
_DISTANCES = {"euclidean": qe.Distance.Euclid, "cosine": qe.Distance.Cosine}


class _FolderLock:
    """An exclusive, non-blocking flock on `<folder>/.lock`; released by `release()` or process exit."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, where: Path) -> None:
        if fcntl is None or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise GalleryInUseError(
                f"gallery at {where} is in use by another process{who}: stop it, or use another "
                "FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION "
                "(or a Qdrant server via QDRANT_HOST for shared access)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class EdgeGallery(QdrantGalleryBase):
    """Gallery in a local folder through qdrant-edge; one process at a time holds it.

    `spec` None opens whatever embedder built the gallery (to list or remove without loading a model).
    `check` False skips the integrity check on open (`verify` makes the full one itself); `load` False
    holds the folder without reading it (restore replaces even a damaged or foreign gallery).
    """

    def __init__(
        self, folder: Path, spec: EmbedderIdentity | None, check: bool = True, load: bool = True
    ) -> None:
        self.folder = Path(folder)
        super().__init__(spec)
        self._lock = _FolderLock(self.folder)
        self._shard: qe.EdgeShard | None = None
        self._shard_name = SHARD_DIR
        self._integrity: IntegrityRecord | None = None
        self._check = check
        # False for stores written often from a running pipeline (kept unknown faces): changes then go
        # in place through Qdrant's write-ahead log, without the copy and without an integrity record.
        self.copy_on_write = True
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(
                f"gallery path {self.folder} is a file, not a folder: use another FACEPIPE_QDRANT_PATH"
            )
        if self._record_path.exists() or (self.folder / SHARD_DIR).exists():
            self._lock.acquire(self.folder)
            try:
                if load:
                    self._open_existing()
            except BaseException:
                self.close()
                raise

    @property
    def _record_path(self) -> Path:
        return self.folder / RECORD_FILE

    @property
    def _shard_path(self) -> Path:
        return self.folder / self._shard_name

    def _read_record(self) -> tuple[GalleryRecord, dict[str, Any]]:
        if not self._record_path.is_file():
            raise UserError(
                f"{self.folder} holds a Qdrant shard but no {RECORD_FILE}, so its embedder is unknown: "
                "use another FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION"
            )
        try:
            data = json.loads(self._record_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot read {self._record_path} ({first_line(exc)}): restore or remove it"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"{self._record_path} is not a gallery record: restore or remove it")
        return GalleryRecord.from_mapping(data, str(self.folder)), data

    def _open_existing(self) -> None:
        stored, data = self._read_record()
        if self.record is None:
            self.record = stored
        stored.require_same(self.record, str(self.folder))
        name = str(data.get("shard", SHARD_DIR))
        if "/" in name or "\\" in name or name.startswith("."):
            raise UserError(
                f"{self._record_path} names an invalid shard folder {name!r}: restore or remove it"
            )
        self._shard_name = name
        self._integrity = IntegrityRecord.from_mapping(data.get("integrity"))
        self._remove_leftovers()
        if (self._shard_path / "edge_config.json").is_file():
            self._shard = self._load(self._shard_path)
            if self._check and self._integrity is not None:
                self._quick_check(self._shard, self._integrity)
        elif "shard" in data:  # format 2 names a shard that it always writes before naming it
            raise damaged(str(self.folder), "shard folder", f"{self._shard_path} is missing")
        # else: a format-1 record written before its first shard: an empty gallery

    def _load(self, path: Path) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(path))
        except Exception as exc:  # the engine raises plain Exception with Qdrant's message
            message = first_line(exc)
            if "WouldBlock" in message:
                raise GalleryInUseError(
                    f"gallery at {self.folder} is in use by another process: stop it, or use another "
                    "FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION"
                ) from None
            raise damaged(str(self.folder), "shard storage", f"cannot load {path.name}: {message}") from None

    def _quick_check(self, shard: qe.EdgeShard, integrity: IntegrityRecord) -> None:
        """Count and a sample of points read back against the record: a few ms whatever the size."""
        where = str(self.folder)
        try:
            integrity.check_count(shard.info().points_count, where)
            found = shard.retrieve(list(integrity.sample_ids), with_payload=True, with_vector=True)
        except GalleryDamagedError:
            raise
        except Exception as exc:  # noqa: BLE001 - qdrant-edge raises plain Exception
            raise damaged(where, "shard storage", first_line(exc)) from None
        integrity.check_sample(((rec.id, rec.payload, rec.vector) for rec in found), where)

    def _remove_leftovers(self) -> None:
        """Shard folders of changes that never committed (the process died); we hold the lock."""
        for entry in self.folder.iterdir():
            if entry.is_dir() and entry.name.startswith(SHARD_PREFIX) and entry.name != self._shard_name:
                shutil.rmtree(entry, ignore_errors=True)

    def _recorded_integrity(self) -> IntegrityRecord | None:
        return self._integrity

    @contextlib.contextmanager
    def _engine_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - qdrant-edge reports unreadable storage as plain Exception
            if type(exc) is not Exception:
                raise
            raise damaged(
                str(self.folder), "shard storage", f"cannot {action} it: {first_line(exc)}"
            ) from None

    def _change(self, apply: Callable[[qe.EdgeShard], object], fresh: bool = False) -> None:
        """Apply one change on a copy of the shard (on an empty shard if `fresh`) and commit it by replacing
        gallery.json atomically."""
        assert self.record is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.folder)
        if not self.copy_on_write and not fresh and self._shard is not None:
            self._change_in_place(apply)
            return
        if fresh:
            if self._shard is not None:
                self._shard.close()
                self._shard = None
        elif self._shard is None and self._record_path.exists():  # another process created it since we opened
            self._open_existing()
        new_name = f"{SHARD_PREFIX}{uuid.uuid4().hex[:16]}"
        new_path = self.folder / new_name
        old = self._shard
        if old is not None:
            old.close()  # a closed shard is a consistent set of files to copy
            self._shard = None
        shard: qe.EdgeShard | None = None
        try:
            if old is not None:
                sparse_copytree(self._shard_path, new_path)
                shard = self._load(new_path)
            else:
                config = qe.EdgeConfig(
                    vectors=qe.EdgeVectorParams(size=self.record.dim, distance=_DISTANCES[self.record.metric])
                )
                shard = qe.EdgeShard.create(str(new_path), config)
                # A keyword index on name makes list() a facet query and name filters cheap.
                shard.update(qe.UpdateOperation.create_field_index("name", qe.PayloadSchemaType.Keyword))
            apply(shard)
            shard.flush()
            integrity = IntegrityRecord.of(_all_points(shard))
            record = {
                **self.record.as_dict(),
                "format": FORMAT_VERSION,
                "engine": "qdrant-edge",
                "shard": new_name,
                "integrity": integrity.as_dict(),
            }
            write_json_atomically(self._record_path, record)  # the commit point
        except BaseException:
            if shard is not None:
                shard.close()
            shutil.rmtree(new_path, ignore_errors=True)
            if old is not None:
                self._shard = self._load(self._shard_path)  # as it was before the change
            raise
        previous = self._shard_path if old is not None else None
        self._shard, self._shard_name, self._integrity = shard, new_name, integrity
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        if old is None:
            log.info("created gallery %s for %s", self.folder, self.record.model_id)

    def _change_in_place(self, apply: Callable[[qe.EdgeShard], object]) -> None:
        """The fast path of `copy_on_write` False: Qdrant's own write-ahead log, no copy. The integrity
        record is dropped first (one atomic write), since an interrupted change would no longer match it."""
        assert self.record is not None and self._shard is not None
        if self._integrity is not None:
            record = {**self.record.as_dict(), "format": FORMAT_VERSION, "engine": "qdrant-edge"}
            write_json_atomically(self._record_path, {**record, "shard": self._shard_name})
            self._integrity = None
        apply(self._shard)
        self._shard.flush()

    def replace_points(self, points: Sequence[tuple[str, Sequence[float], dict[str, Any]]]) -> None:
        """Make the gallery hold exactly `points` (id, vector, payload) and nothing else, in one commit."""
        self._require_record()

        def apply(shard: qe.EdgeShard) -> None:
            for start in range(0, len(points), 1024):
                chunk = [qe.Point(i, list(v), dict(p)) for i, v, p in points[start : start + 1024]]
                shard.update(qe.UpdateOperation.upsert_points(chunk))

        with self._engine_errors("restore"):
            self._change(apply, fresh=True)
        self._remove_leftovers()
        legacy = self.folder / SHARD_DIR
        if legacy.is_dir() and self._shard_name != SHARD_DIR:
            shutil.rmtree(legacy, ignore_errors=True)

    @property
    def _location(self) -> str:
        return str(self.folder)

    def _has_storage(self) -> bool:
        return self._shard is not None

    def _count(self, name: str | None = None) -> int:
        if self._shard is None:
            return 0
        if name is None:  # the shard keeps the total; an exact count scans (13 ms at 100k points)
            return self._shard.info().points_count
        return self._shard.count(qe.CountRequest(exact=True, filter=_name_filter(name)))

    def _upsert(self, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        points = [
            qe.Point(str(uuid.uuid4()), row.tolist(), payload)
            for row, payload in zip(vectors, payloads, strict=True)
        ]
        self._change(lambda shard: shard.update(qe.UpdateOperation.upsert_points(points)))

    def _query(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        assert self._shard is not None
        requests = [
            qe.QueryRequest(limit=limit, query=qe.Query.Nearest(row.tolist()), with_payload=["name"])
            for row in vectors
        ]
        batches = self._shard.query_batch(qe.QueryBatchRequest(requests))
        # with_payload=["name"]: every hit carries a payload with the name
        return [[(cast(dict[str, Any], hit.payload)["name"], hit.score) for hit in hits] for hits in batches]

    def _delete_name(self, name: str) -> None:
        assert self._shard is not None
        self._change(
            lambda shard: shard.update(qe.UpdateOperation.delete_points_by_filter(_name_filter(name)))
        )

    def _delete_ids(self, ids: Sequence[str]) -> None:
        assert self._shard is not None
        targets: list[int | uuid.UUID | str] = [uuid.UUID(i) for i in ids]
        self._change(lambda shard: shard.update(qe.UpdateOperation.delete_points(targets)))

    def _name_counts(self, limit: int) -> Iterable[tuple[str, int]]:
        assert self._shard is not None
        facets = self._shard.facet(qe.FacetRequest(key="name", limit=limit, exact=True))
        return [(hit.value, hit.count) for hit in facets]

    def _scroll_page(
        self, name: str | None, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[Sequence[Any], Any]:
        assert self._shard is not None
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_name_filter(name) if name else None,
            with_payload=True,
            with_vector=with_vectors,
        )
        return self._shard.scroll(request)

    def optimize(self) -> bool:
        """Build the HNSW index (worth it for ~100k points: ~4 -> ~2.5 ms a query; takes ~30 s on 2 cores)."""
        self._require_open()
        if self._shard is None:
            return False
        built: list[bool] = []
        self._change(lambda shard: built.append(bool(shard.optimize())))
        return built[0]

    def close(self) -> None:
        if self._shard is not None:
            try:
                self._shard.flush()
            finally:
                self._shard.close()
                self._shard = None
        self._lock.release()
        self._closed = True

    def __repr__(self) -> str:
        return f"EdgeGallery({str(self.folder)!r}, {self.record.model_id if self.record else None})"


def _name_filter(name: str) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition(key="name", match=qe.MatchValue(name))])


def _all_points(shard: qe.EdgeShard) -> list[tuple[Any, dict[str, Any], Any]]:
    """(id, payload, vector) of every point of a shard."""
    out: list[tuple[Any, dict[str, Any], Any]] = []
    offset = None
    while True:
        page, offset = shard.scroll(
            qe.ScrollRequest(offset=offset, limit=1024, with_payload=True, with_vector=True)
        )
        out.extend((rec.id, dict(rec.payload or {}), rec.vector) for rec in page)
        if offset is None:
            return out
