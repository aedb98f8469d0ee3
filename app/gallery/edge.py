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
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import qdrant_edge as qe

from app.errors import UserError
from app.gallery.base import (
    EmbedderIdentity,
    GalleryInfo,
    GalleryInUseError,
    GalleryRecord,
    Match,
    PointMeta,
    check_name,
    check_vectors,
    point_payloads,
    search_per_person,
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
_SCROLL_PAGE = 1024


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


class EdgeGallery:
    """Gallery in a local folder through qdrant-edge; one process at a time holds it.

    `spec` None opens whatever embedder built the gallery (to list or remove without loading a model).
    """

    def __init__(self, folder: Path, spec: EmbedderIdentity | None) -> None:
        self.folder = Path(folder)
        self.record: GalleryRecord | None = GalleryRecord.of(spec) if spec is not None else None
        self._lock = _FolderLock(self.folder)
        self._shard: qe.EdgeShard | None = None
        self._closed = False
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
                f"cannot read {self._record_path} ({_first_line(exc)}): restore or remove it"
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
                message = _first_line(exc)
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

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the gallery is closed")

    def _require_record(self) -> GalleryRecord:
        self._require_open()
        if self.record is None:
            raise UserError(f"no gallery at {self.folder} yet: enroll with an embedder model to create it")
        return self.record

    def _count(self, name: str | None = None) -> int:
        if self._shard is None:
            return 0
        if name is None:  # the shard keeps the total; an exact count scans (13 ms at 100k points)
            return self._shard.info().points_count
        return self._shard.count(qe.CountRequest(exact=True, filter=_name_filter(name)))

    def add(self, name: str, vectors: np.ndarray, meta: PointMeta = None) -> int:
        """Store each row as a point of `name`, all in one update operation; returns how many were added."""
        record = self._require_record()
        check_name(name)
        array = check_vectors(vectors, record.dim)
        payloads = point_payloads(name, len(array), meta)
        if len(array) == 0:
            return 0
        shard = self._shard or self._create()
        points = [
            qe.Point(str(uuid.uuid4()), row.tolist(), payload)
            for row, payload in zip(array, payloads, strict=True)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
        shard.flush()
        return len(points)

    def search(self, vectors: np.ndarray, k: int = 1) -> list[list[Match]]:
        self._require_open()
        if self.record is None:  # opened without a spec and nothing enrolled yet
            return [[] for _ in np.atleast_2d(vectors)]
        array = check_vectors(vectors, self.record.dim)
        return search_per_person(self._query, array, k, self._count(), self.record.metric)

    def _query(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        assert self._shard is not None
        requests = [
            qe.QueryRequest(limit=limit, query=qe.Query.Nearest(row.tolist()), with_payload=["name"])
            for row in vectors
        ]
        batches = self._shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(hit.payload["name"], hit.score) for hit in hits] for hits in batches]

    def remove(self, name: str) -> int:
        """Delete every point of `name` in one operation; returns how many were removed (0 if unknown)."""
        self._require_open()
        count = self._count(name)
        if count:
            assert self._shard is not None
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(_name_filter(name)))
            self._shard.flush()
        return count

    def list(self) -> dict[str, int]:
        """Persons and their number of embeddings, sorted by name."""
        self._require_open()
        total = self._count()
        if total == 0:
            return {}
        assert self._shard is not None
        facets = self._shard.facet(qe.FacetRequest(key="name", limit=total, exact=True))
        # The keyword index can keep a deleted name with count 0 until the segment is optimised.
        return {hit.value: hit.count for hit in sorted(facets, key=lambda hit: hit.value) if hit.count > 0}

    def vectors(self, name: str) -> np.ndarray:
        """(n, dim) float32 embeddings of `name`, oldest first (cosine ones come back unit-normalised)."""
        records = self.records(name, with_vectors=True)
        if not records:
            return np.zeros((0, self.record.dim if self.record else 0), np.float32)
        return np.asarray([vector for _, vector in records], dtype=np.float32)

    def records(
        self, name: str | None = None, with_vectors: bool = False
    ) -> list[tuple[dict[str, Any], Any]]:
        """(payload, vector or None) of every point (of `name` if given), ordered by time added."""
        self._require_open()
        if self._shard is None:
            return []
        out: list[tuple[dict[str, Any], Any]] = []
        offset = None
        while True:
            request = qe.ScrollRequest(
                offset=offset,
                limit=_SCROLL_PAGE,
                filter=_name_filter(name) if name else None,
                with_payload=True,
                with_vector=with_vectors,
            )
            page, offset = self._shard.scroll(request)
            out.extend((dict(rec.payload or {}), rec.vector if with_vectors else None) for rec in page)
            if offset is None:
                break
        out.sort(key=lambda item: (str(item[0].get("added", "")), str(item[0].get("source", ""))))
        return out

    def info(self) -> GalleryInfo:
        self._require_open()
        if self.record is None:
            return GalleryInfo(model_id="", dim=0, metric="", count=0, persons=0)
        return GalleryInfo(
            model_id=self.record.model_id,
            dim=self.record.dim,
            metric=self.record.metric,
            count=self._count(),
            persons=len(self.list()),
        )

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

    def __enter__(self) -> EdgeGallery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeGallery({str(self.folder)!r}, {self.record.model_id if self.record else None})"


def _name_filter(name: str) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition(key="name", match=qe.MatchValue(name))])
