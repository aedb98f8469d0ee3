"""Gallery interface shared by the embedded (qdrant-edge) and server (qdrant-client) engines.

A gallery stores several embeddings per person (one Qdrant point each, payload: name, source, added time)
and answers "who is this?" per person: `search` returns the best match of each of the k nearest persons,
in the embedder spec's similarity units (higher = more alike).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

from app.errors import UserError

METRICS = ("euclidean", "cosine")
RESERVED_PAYLOAD_KEYS = ("name", "added")


@dataclass(frozen=True)
class Match:
    name: str
    similarity: float


@dataclass(frozen=True)
class GalleryInfo:
    model_id: str
    dim: int
    metric: str
    count: int  # points (embeddings)
    persons: int  # distinct names


class EmbedderIdentity(Protocol):
    """What a gallery needs from `app.inference.spec.EmbedderSpec`."""

    model_id: str
    dim: int
    metric: str


# One mapping for every vector of an `add`, or one mapping per vector (e.g. {"source": path}).
PointMeta = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


@runtime_checkable
class Gallery(Protocol):
    def add(self, name: str, vectors: np.ndarray, meta: PointMeta = None) -> int:
        """Store (N, D) vectors of `name` in one write; returns N."""
        ...

    def search(self, vectors: np.ndarray, k: int = 1) -> list[list[Match]]:
        """Per query vector, the best match of each of the k most similar persons, best first."""
        ...

    def remove(self, name: str) -> int:
        """Delete all of `name`'s vectors; returns how many (0 for an unknown name)."""
        ...

    def list(self) -> dict[str, int]:
        """Name -> number of vectors, sorted by name."""
        ...

    def vectors(self, name: str) -> np.ndarray:
        """(n, D) float32 vectors of `name`, oldest first."""
        ...

    def info(self) -> GalleryInfo: ...

    def close(self) -> None: ...


class GalleryInUseError(UserError):
    """The gallery folder is held by another running process."""


class GalleryMismatchError(UserError):
    """The gallery was built by another embedder than the one of this run."""


@dataclass(frozen=True)
class GalleryRecord:
    """Which embedder built a gallery; stored with it and checked on every open."""

    model_id: str
    dim: int
    metric: str

    @classmethod
    def of(cls, spec: EmbedderIdentity) -> GalleryRecord:
        if spec.metric not in METRICS:
            raise UserError(
                f"embedder metric {spec.metric!r} is not supported by the gallery (use {METRICS})"
            )
        return cls(model_id=str(spec.model_id), dim=int(spec.dim), metric=str(spec.metric))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> GalleryRecord:
        try:
            return cls(model_id=str(data["model_id"]), dim=int(data["dim"]), metric=str(data["metric"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"gallery at {where} has no valid embedder record: use another QDRANT_PATH/QDRANT_COLLECTION"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def require_same(self, wanted: GalleryRecord, where: str) -> None:
        if self != wanted:
            metric_note = "" if self.metric == wanted.metric else f", {self.metric} vs {wanted.metric}"
            raise GalleryMismatchError(
                f"gallery at {where} was built with embedder {self.model_id} (dim {self.dim}); this run uses "
                f"{wanted.model_id} (dim {wanted.dim}{metric_note}): use another "
                "QDRANT_PATH/QDRANT_COLLECTION or re-enroll"
            )


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError("a person's name must be a non-empty string")
    if name != name.strip():
        raise UserError(f"name {name!r} has leading or trailing spaces: remove them")
    return name


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) finite float32; a single (dim,) vector is accepted as N = 1."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(array).all():
        raise ValueError("vectors contain NaN or infinity")
    return array


def point_payloads(name: str, count: int, meta: PointMeta) -> list[dict[str, Any]]:
    """Payload per point: the caller's metadata plus name and the time it was added (UTC, ISO 8601)."""
    if meta is None:
        metas: Sequence[Mapping[str, Any]] = [{}] * count
    elif isinstance(meta, Mapping):
        metas = [meta] * count
    else:
        metas = list(meta)
        if len(metas) != count:
            raise ValueError(f"got {len(metas)} metadata entries for {count} vectors")
    added = datetime.now(UTC).isoformat(timespec="microseconds")
    payloads = []
    for item in metas:
        clash = [key for key in RESERVED_PAYLOAD_KEYS if key in item]
        if clash:
            raise ValueError(f"metadata must not set {clash}: the gallery sets them")
        payloads.append({**item, "name": name, "added": added})
    return payloads


def similarity_from_score(score: float, metric: str) -> float:
    """Qdrant's score to the spec's similarity: Euclid scores are distances, Cosine scores similarities."""
    return 1.0 - score if metric == "euclidean" else score


def best_per_person(hits: Iterable[tuple[str, float]], k: int) -> list[Match]:
    """Keep the first (best) hit of each name from best-first (name, similarity) hits, up to k persons."""
    seen: dict[str, float] = {}
    for name, similarity in hits:
        if name not in seen:
            seen[name] = similarity
            if len(seen) == k:
                break
    return [Match(name, float(similarity)) for name, similarity in seen.items()]


def search_per_person(
    run_queries: Callable[[np.ndarray, int], list[list[tuple[str, float]]]],
    vectors: np.ndarray,
    k: int,
    total: int,
    metric: str,
) -> list[list[Match]]:
    """k persons per query vector (not k points): fetch a few points per person, and fetch more for the
    queries whose nearest points repeat names, until k names are found or every point was seen.

    `run_queries(vectors, limit)` returns, per vector, (name, Qdrant score) pairs best first.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    results: list[list[Match]] = [[] for _ in range(len(vectors))]
    if total == 0 or len(vectors) == 0:
        return results
    pending = list(range(len(vectors)))
    limit = max(1, min(total, max(8 * k, 32)))
    while pending:
        hits = run_queries(vectors[pending], limit)
        short = []
        for index, found in zip(pending, hits, strict=True):
            results[index] = best_per_person(
                ((name, similarity_from_score(s, metric)) for name, s in found), k
            )
            if len(results[index]) < k and limit < total:
                short.append(index)
        pending = short
        limit = min(total, limit * 4)
    return results
