"""Embedded gallery: Qdrant's native engine in-process (qdrant-edge-py), one shard per collection folder.

Layout of `<qdrant_path>/<collection>/`:
  gallery.json   which embedder built it (model id, dim, metric), written atomically before the shard
  shard/         the Qdrant edge shard (segments + write-ahead log)
  .lock          flock held while a process has the gallery open (its pid inside, for the error message)
Nothing is written until the first `add`, so `identify`/`list` on a new path leave no empty gallery behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from app.errors import UserError
from app.gallery.base import (
    EmbedderIdentity,
    GalleryInUseError,
    GalleryRecord,
    QdrantGalleryBase,
    first_line,
)

try:
    import fcntl
except ImportError:  # Windows: Qdrant's own WAL lock still refuses a second opener
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RECORD_FILE = "gallery.json"
SHARD_DIR = "shard"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
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
                "QDRANT_PATH/QDRANT_COLLECTION (or a Qdrant server via QDRANT_HOST for shared access)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EdgeGallery(QdrantGalleryBase):
    """Gallery in a local folder through qdrant-edge; one process at a time holds it.

    `spec` None opens whatever embedder built the gallery (to list or remove without loading a model).
    """

    def __init__(self, folder: Path, spec: EmbedderIdentity | None) -> None:
        self.folder = Path(folder)
        super().__init__(spec)
        self._lock = _FolderLock(self.folder)
        self._shard: qe.EdgeShard | None = None
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"gallery path {self.folder} is a file, not a folder: use another QDRANT_PATH")
        if self._record_path.exists() or self._shard_path.exists():
            self._lock.acquire(self.folder)
            try:
                self._open_existing()
            except BaseException:
                self.close()
                raise

    @property
    def _record_path(self) -> Path:
        return self.folder / RECORD_FILE

    @property
    def _shard_path(self) -> Path:
        return self.folder / SHARD_DIR

    def _read_record(self) -> GalleryRecord:
        if not self._record_path.is_file():
            raise UserError(
                f"{self.folder} holds a Qdrant shard but no {RECORD_FILE}, so its embedder is unknown: "
                "use another QDRANT_PATH/QDRANT_COLLECTION"
            )
        try:
            data = json.loads(self._record_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot read {self._record_path} ({first_line(exc)}): restore or remove it"
            ) from None
        return GalleryRecord.from_mapping(data, str(self.folder))

    def _open_existing(self) -> None:
        stored = self._read_record()
        if self.record is None:
            self.record = stored
        stored.require_same(self.record, str(self.folder))
        if (self._shard_path / "edge_config.json").is_file():
            try:
                self._shard = qe.EdgeShard.load(str(self._shard_path))
            except Exception as exc:  # the engine raises plain Exception with Qdrant's message
                message = first_line(exc)
                if "WouldBlock" in message:
                    raise GalleryInUseError(
                        f"gallery at {self.folder} is in use by another process: stop it, or use another "
                        "QDRANT_PATH/QDRANT_COLLECTION"
                    ) from None
                raise UserError(f"cannot open the gallery shard at {self._shard_path}: {message}") from None
        # else: the record was written but the shard not yet (first add failed or is pending): empty gallery

    def _create(self) -> qe.EdgeShard:
        """Make the folder, record and shard on the first add (after the caller computed its vectors)."""
        assert self.record is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.folder)
        if self._record_path.exists():  # another process created it since we opened
            self._open_existing()
            if self._shard is not None:
                return self._shard
        else:
            record = {**self.record.as_dict(), "format": FORMAT_VERSION, "engine": "qdrant-edge"}
            _write_json_atomically(self._record_path, record)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.record.dim, distance=_DISTANCES[self.record.metric])
        )
        shard = qe.EdgeShard.create(str(self._shard_path), config)
        # A keyword index on name makes list() a facet query and name filters cheap.
        shard.update(qe.UpdateOperation.create_field_index("name", qe.PayloadSchemaType.Keyword))
        shard.flush()
        self._shard = shard
        log.info("created gallery %s for %s", self.folder, self.record.model_id)
        return shard

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
        shard = self._shard or self._create()
        points = [
            qe.Point(str(uuid.uuid4()), row.tolist(), payload)
            for row, payload in zip(vectors, payloads, strict=True)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
        shard.flush()

    def _query(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        assert self._shard is not None
        requests = [
            qe.QueryRequest(limit=limit, query=qe.Query.Nearest(row.tolist()), with_payload=["name"])
            for row in vectors
        ]
        batches = self._shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(hit.payload["name"], hit.score) for hit in hits] for hits in batches]

    def _delete_name(self, name: str) -> None:
        assert self._shard is not None
        self._shard.update(qe.UpdateOperation.delete_points_by_filter(_name_filter(name)))
        self._shard.flush()

    def _delete_ids(self, ids: Sequence[str]) -> None:
        assert self._shard is not None
        self._shard.update(qe.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))
        self._shard.flush()

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
        return bool(self._shard and self._shard.optimize())

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
