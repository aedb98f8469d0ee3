"""Gallery interface shared by the embedded (qdrant-edge) and server (qdrant-client) engines.

A gallery stores several embeddings per person (one Qdrant point each, payload: name, source, added time)
and answers "who is this?" per person: `search` returns the k most similar persons, each scored over their
best photos (`person_similarity`), in the embedder spec's similarity units (higher = more alike).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from app.errors import UserError
from app.gallery.integrity import (
    GalleryDamagedError,
    IntegrityRecord,
    VerifyReport,
    check_vector_values,
    damaged,
)
from app.inference.spec import METRICS, similarity_from_distance

RESERVED_PAYLOAD_KEYS = ("name", "added")
SCROLL_PAGE = 1024  # points per scroll request when reading a gallery back


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
    """What a gallery needs from `app.inference.spec.EmbedderSpec` (read-only, as frozen dataclasses are)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def metric(self) -> str: ...


# One mapping for every vector of an `add`, or one mapping per vector (e.g. {"source": path}).
PointMeta = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
# (point id, payload, vector or None): one stored embedding as `points` returns it. An alias, since inside the
# gallery classes `list` names their method.
PointList = list[tuple[str, dict[str, Any], Any]]
# (payload, vector or None): one stored embedding as `records` returns it.
RecordList = list[tuple[dict[str, Any], Any]]


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

    # Point-level access (the face library: list --details, remove --embedding, rename, export).
    record: GalleryRecord | None

    def points(self, name: str | None = None, with_vectors: bool = False) -> PointList:
        """(point id, payload, vector or None) per point, oldest first."""
        ...

    def remove_points(self, ids: Sequence[str]) -> int:
        """Delete these points in one write."""
        ...


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
                f"gallery at {where} has no valid embedder record: use another "
                "FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def require_same(self, wanted: GalleryRecord, where: str) -> None:
        if self != wanted:
            metric_note = "" if self.metric == wanted.metric else f", {self.metric} vs {wanted.metric}"
            raise GalleryMismatchError(
                f"gallery at {where} was built with embedder {self.model_id} (dim {self.dim}); this run uses "
                f"{wanted.model_id} (dim {wanted.dim}{metric_note}): use another "
                "FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION or re-enroll"
            )


MAX_NAME_LENGTH = 200
# control, format, surrogate, private-use and unassigned characters
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def check_name(name: str) -> str:
    """The one validation of a person's name, for every command that takes one: non-empty, no surrounding
    spaces, at most MAX_NAME_LENGTH characters, and no control, format, unassigned or line/paragraph
    separator characters (a newline or a terminal escape code would break listings and logs)."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("a person's name must be a non-empty string")
    bad = next(
        (ch for ch in name if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")),
        None,
    )
    if bad is not None:
        raise UserError(
            f"name {name!r} contains control characters (U+{ord(bad):04X}): use letters, digits, spaces "
            "and punctuation"
        )
    if name != name.strip():
        raise UserError(f"name {name!r} has leading or trailing spaces: remove them")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(
            f"name {name[:40]!r}... is {len(name)} characters long: use at most {MAX_NAME_LENGTH}"
        )
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
    return similarities_from_scores([score], metric)[0]


def similarities_from_scores(scores: Sequence[float], metric: str) -> list[float]:
    """`similarity_from_score` of each score, as Python floats: one array operation for a query's hits."""
    if metric != "euclidean":
        return list(scores)
    similarities: list[float] = np.asarray(
        similarity_from_distance(np.array(scores, np.float64), metric)
    ).tolist()
    return similarities


# A person's score for a face is a soft maximum over their best PERSON_PHOTOS photos, not the best photo
# alone: with the plain maximum every extra photo is one more chance for a stranger to score high, so a
# threshold that kept strangers out at 3 photos a person was stricter than 1 photo needs (0.44 against 0.42
# for dlib). Photos of the person that disagree with the face now count against it, by at most
# log(PERSON_PHOTOS) / PERSON_SOFTNESS (0.027) below the best; one photo scores its own similarity.
# Measured on ../shared/data/identities (app/inference/spec.py): 30-60 give the same thresholds.
PERSON_PHOTOS = 3
PERSON_SOFTNESS = 40.0  # per similarity unit


def person_similarity(similarities: np.ndarray) -> np.ndarray:
    """Person scores from similarities to that person's photos along the last axis (any order, at least
    one): the log-mean-exp with PERSON_SOFTNESS of the best PERSON_PHOTOS of them."""
    s = np.asarray(similarities, np.float64)
    if s.shape[-1] > PERSON_PHOTOS:
        s = -np.partition(-s, PERSON_PHOTOS - 1, axis=-1)[..., :PERSON_PHOTOS]
    top = s.max(axis=-1, keepdims=True)
    spread = np.log(np.mean(np.exp(PERSON_SOFTNESS * (s - top)), axis=-1)) / PERSON_SOFTNESS
    return np.asarray(top[..., 0] + spread)


def person_score(similarities: Sequence[float]) -> float:
    """`person_similarity` of one person's few similarities, in Python floats: the gallery search scores
    every person among a query's hits, and numpy's per-call cost on 1-3 values was most of the search's
    CPU. The same operations in the same order (tests pin it equal to `person_similarity`)."""
    values = (
        similarities if len(similarities) <= PERSON_PHOTOS else heapq.nlargest(PERSON_PHOTOS, similarities)
    )
    top = max(values)
    total = 0.0
    for value in values:  # in order, as numpy sums fewer than 8 values
        total += math.exp(PERSON_SOFTNESS * (value - top))
    return top + math.log(total / len(values)) / PERSON_SOFTNESS


def best_per_person(
    hits: Iterable[tuple[str, float]],
    k: int,
    complete: bool = True,
    count_of: Callable[[str], int] | None = None,
) -> tuple[list[Match], bool]:
    """The k best persons of best-first (name, similarity) point hits, scored by `person_similarity` over
    each name's hits, and whether the hits settle them.

    `complete`: the hits are every point of the gallery (they always settle). When they are not (the nearest
    `limit` points), more are needed when a chosen person has fewer hits than min(PERSON_PHOTOS,
    `count_of(name)`), or scores below the last hit (a person not among the hits could score above it)."""
    by_name: dict[str, list[float]] = {}
    lowest = np.inf
    for name, similarity in hits:
        value = float(similarity)
        if value < lowest:
            lowest = value
        found = by_name.get(name)
        if found is None:
            by_name[name] = [value]
        else:
            found.append(value)
    # The best k, best first, ties in first-seen order (a stable sort of every person's score). A person
    # scores at most its best hit (person_score's spread is never positive), so one whose best hit is below
    # the k-th score so far cannot be among them: most of a query's persons are never scored.
    scored: list[tuple[str, float]] = []
    for name, values in by_name.items():
        best = values[:PERSON_PHOTOS]
        if len(scored) == k and max(best) < scored[-1][1]:
            continue
        scored.append((name, person_score(best)))
        scored.sort(key=lambda item: -item[1])
        del scored[k:]
    chosen = [Match(name, similarity) for name, similarity in scored]
    if complete or count_of is None:
        return chosen, True
    if len(scored) < k or scored[-1][1] < lowest:
        return chosen, False
    settled = all(
        len(by_name[name]) >= PERSON_PHOTOS or count_of(name) <= len(by_name[name]) for name, _ in scored
    )
    return chosen, settled


def search_per_person(
    run_queries: Callable[[np.ndarray, int], list[list[tuple[str, float]]]],
    vectors: np.ndarray,
    k: int,
    total: int,
    metric: str,
    count_of: Callable[[str], int] | None = None,
) -> list[list[Match]]:
    """k persons per query vector (not k points), scored by `person_similarity`: fetch a few points per
    person, and fetch more for the queries whose nearest points do not settle the k best persons (names
    repeat, or a chosen person's other photos are further away), until they do or every point was seen.

    `run_queries(vectors, limit)` returns, per vector, (name, Qdrant score) pairs best first;
    `count_of(name)` the points a person has (without it, the nearest points are taken as all there is).
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
            similarities = similarities_from_scores([s for _, s in found], metric)
            pairs = [(name, similarity) for (name, _), similarity in zip(found, similarities, strict=True)]
            complete = limit >= total or len(pairs) < limit
            results[index], settled = best_per_person(pairs, k, complete, count_of)
            if not settled:
                short.append(index)
        pending = short
        limit = min(total, limit * 4)
    return results


def _detail(exc: GalleryDamagedError) -> str:
    """The engine's words inside a damaged-gallery message: what is between its first ' (' and '); '."""
    text = str(exc)
    start, end = text.find(" ("), text.rfind("); ")
    return text[start + 2 : end] if 0 <= start < end else text


class QdrantGalleryBase(ABC):
    """The Gallery operations both Qdrant engines share, built on a few engine primitives.

    An engine supplies where it is (`_location`), whether its storage exists yet (`_has_storage`), counting,
    batched nearest-neighbour queries, name facets, scrolling, upsert and delete by name; it may map its own
    errors to UserErrors in `_engine_errors`.
    """

    def __init__(self, spec: EmbedderIdentity | None) -> None:
        self.record: GalleryRecord | None = GalleryRecord.of(spec) if spec is not None else None
        self._closed = False

    # --- engine primitives -------------------------------------------------------------------------------

    @property
    @abstractmethod
    def _location(self) -> str:
        """Where the gallery is, for messages."""

    @abstractmethod
    def _has_storage(self) -> bool:
        """Whether the engine's collection exists (nothing is created before the first add)."""

    @abstractmethod
    def _count(self, name: str | None = None) -> int:
        """Points of `name` (or all points); 0 when there is no storage yet."""

    @abstractmethod
    def _query(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Per vector, (name, Qdrant score) of its `limit` nearest points, best first."""

    @abstractmethod
    def _name_counts(self, limit: int) -> Iterable[tuple[str, int]]:
        """(name, points) of up to `limit` names (a facet on the name index)."""

    @abstractmethod
    def _scroll_page(
        self, name: str | None, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[Sequence[Any], Any]:
        """One page of points (objects with .payload and .vector) of `name` (or all) and the next offset."""

    @abstractmethod
    def _upsert(self, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        """Store one point per row in one write, creating the storage on the first add."""

    @abstractmethod
    def _delete_name(self, name: str) -> None:
        """Delete every point of `name` in one write."""

    @abstractmethod
    def close(self) -> None: ...

    def _engine_errors(self, action: str) -> AbstractContextManager[None]:
        """Maps the engine's failures to "action" the gallery to UserErrors; the default maps nothing."""
        return contextlib.nullcontext()

    # --- the Gallery operations ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the gallery is closed")

    def _require_record(self) -> GalleryRecord:
        self._require_open()
        if self.record is None:
            raise UserError(f"no gallery at {self._location} yet: enroll with an embedder model to create it")
        return self.record

    def add(self, name: str, vectors: np.ndarray, meta: PointMeta = None) -> int:
        """Store each row as a point of `name` in one write; returns how many were added."""
        record = self._require_record()
        check_name(name)
        array = check_vectors(vectors, record.dim)
        payloads = point_payloads(name, len(array), meta)
        if len(array) == 0:
            return 0
        with self._engine_errors("add to"):
            self._upsert(array, payloads)
        return len(array)

    def search(self, vectors: np.ndarray, k: int = 1) -> list[list[Match]]:
        self._require_open()
        if self.record is None:  # opened without a spec and nothing enrolled yet
            return [[] for _ in np.atleast_2d(vectors)]
        array = check_vectors(vectors, self.record.dim)
        with self._engine_errors("search"):
            counts: dict[str, int] = {}  # per call: another process may enroll between searches

            def count_of(name: str) -> int:
                if name not in counts:
                    counts[name] = self._count(name)
                return counts[name]

            return search_per_person(self._query, array, k, self._count(), self.record.metric, count_of)

    def remove(self, name: str) -> int:
        """Delete every point of `name` in one write; returns how many were removed (0 if unknown)."""
        self._require_open()
        with self._engine_errors("remove from"):
            count = self._count(name)
            if count:
                self._delete_name(name)
        return count

    def list(self) -> dict[str, int]:
        """Persons and their number of embeddings, sorted by name."""
        self._require_open()
        with self._engine_errors("list"):
            total = self._count()
            if total == 0:
                return {}
            counts = sorted(self._name_counts(total), key=lambda item: item[0])
        # The keyword index can keep a deleted name with count 0 until the segment is optimised.
        return {name: count for name, count in counts if count > 0}

    def vectors(self, name: str) -> np.ndarray:
        """(n, dim) float32 embeddings of `name`, oldest first (cosine ones come back unit-normalised)."""
        records = self.records(name, with_vectors=True)
        if not records:
            return np.zeros((0, self.record.dim if self.record else 0), np.float32)
        return np.asarray([vector for _, vector in records], dtype=np.float32)

    def records(self, name: str | None = None, with_vectors: bool = False) -> RecordList:
        """(payload, vector or None) of every point (of `name` if given), ordered by time added."""
        self._require_open()
        if not self._has_storage():
            return []
        out: RecordList = []
        offset = None
        with self._engine_errors("read"):
            while True:
                page, offset = self._scroll_page(name, offset, SCROLL_PAGE, with_vectors)
                out.extend((dict(rec.payload or {}), rec.vector if with_vectors else None) for rec in page)
                if offset is None:
                    break
        out.sort(key=lambda item: (str(item[0].get("added", "")), str(item[0].get("source", ""))))
        return out

    def points(self, name: str | None = None, with_vectors: bool = False) -> PointList:
        """(point id, payload, vector or None) of every point (of `name` if given), ordered by time added."""
        self._require_open()
        if not self._has_storage():
            return []
        out: list[tuple[str, dict[str, Any], Any]] = []
        offset = None
        with self._engine_errors("read"):
            while True:
                page, offset = self._scroll_page(name, offset, SCROLL_PAGE, with_vectors)
                out.extend(
                    (str(r.id), dict(r.payload or {}), r.vector if with_vectors else None) for r in page
                )
                if offset is None:
                    break
        out.sort(key=lambda item: (str(item[1].get("added", "")), str(item[1].get("source", ""))))
        return out

    def remove_points(self, ids: Sequence[str]) -> int:
        """Delete these points (ids from `points`) in one write; returns how many were asked for."""
        self._require_open()
        if ids and self._has_storage():
            with self._engine_errors("remove from"):
                self._delete_ids([str(i) for i in ids])
        return len(ids)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        """Delete points by id in one write (an engine primitive; both engines have it)."""
        raise NotImplementedError

    def _recorded_integrity(self) -> IntegrityRecord | None:
        """The checksum recorded with the last change, where the engine keeps one."""
        return None

    def verify(self) -> VerifyReport:
        """Read every payload and every vector back; GalleryDamagedError names the part that fails."""
        record = self._require_record()
        where = self._location
        try:
            with self._engine_errors("read the names of"):
                named = list(self.points(with_vectors=False))
        except GalleryDamagedError as exc:
            raise damaged(where, "payload storage (names)", _detail(exc)) from None
        nameless = sum(1 for _, payload, _ in named if not isinstance((payload or {}).get("name"), str))
        if nameless:
            raise damaged(where, "payload storage (names)", f"{nameless} embedding(s) have no name")
        try:
            with self._engine_errors("read the vectors of"):
                every = list(self.points(with_vectors=True))
        except GalleryDamagedError as exc:
            raise damaged(where, "vector storage", _detail(exc)) from None
        check_vector_values(every, record.dim, where)
        with self._engine_errors("count"):
            counted = self._count()
        if counted != len(every):
            raise damaged(where, "point count", f"{counted} counted, {len(every)} read")
        recorded = self._recorded_integrity()
        if recorded is not None:
            recorded.check_count(len(every), where)
            if IntegrityRecord.of(every).digest != recorded.digest:
                raise damaged(where, "vectors or names", "they differ from the checksum recorded")
        persons = len({payload["name"] for _, payload, _ in named})
        return VerifyReport(where, len(every), persons, "ok" if recorded is not None else "not recorded")

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
