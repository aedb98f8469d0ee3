"""Gallery in a Qdrant server collection through qdrant-client.

The client is injected, so the same class runs against a server (`QdrantClient(host=...)`) or against
qdrant-client's local mode (`QdrantClient(path=...)` / `":memory:"`), which speaks the same API (tests).
The embedder record (model id, dim, metric) lives in the collection's metadata.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException

from app.errors import UserError
from app.gallery.base import (
    EmbedderIdentity,
    GalleryInfo,
    GalleryRecord,
    Match,
    PointMeta,
    check_name,
    check_vectors,
    point_payloads,
    search_per_person,
)
from app.url_masking import mask_url

log = logging.getLogger(__name__)

RECORD_KEY = "face_gallery"  # key of the embedder record inside the collection metadata
_DISTANCES = {"euclidean": models.Distance.EUCLID, "cosine": models.Distance.COSINE}
_SCROLL_PAGE = 1024


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ServerGallery:
    """Gallery in collection `collection` of the Qdrant behind `client`; `where` names it in messages.

    The gallery owns `client` (closes it). `spec` None opens whatever embedder built the collection.
    """

    def __init__(
        self, client: QdrantClient, collection: str, spec: EmbedderIdentity | None, where: str = ""
    ) -> None:
        self.client = client
        self.collection = collection
        self.record: GalleryRecord | None = GalleryRecord.of(spec) if spec is not None else None
        self.where = f"{where or 'Qdrant'} collection {collection!r}"
        self._exists = False
        self._closed = False
        try:
            with self._server_errors("open"):
                if client.collection_exists(collection):
                    self._check_existing()
                    self._exists = True
        except BaseException:
            self.close()  # the gallery owns its client, injected or not
            raise

    @contextlib.contextmanager
    def _server_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except ApiException as exc:
            raise UserError(
                f"Qdrant failed to {action} the gallery at {self.where}: {_first_line(exc)} "
                "(check QDRANT_HOST, QDRANT_PORT, QDRANT_API_KEY, QDRANT_HTTPS)"
            ) from None

    def _check_existing(self) -> None:
        config = self.client.get_collection(self.collection).config
        stored = (getattr(config, "metadata", None) or {}).get(RECORD_KEY)
        if stored is None:
            raise UserError(
                f"{self.where} was not made by this gallery (no embedder record in its metadata): "
                "use another QDRANT_COLLECTION"
            )
        record = GalleryRecord.from_mapping(stored, self.where)
        if self.record is None:
            self.record = record
        record.require_same(self.record, self.where)
        params = config.params.vectors
        if isinstance(params, models.VectorParams) and (
            params.size != record.dim or params.distance != _DISTANCES[record.metric]
        ):
            raise UserError(
                f"{self.where} stores {params.size}-d {params.distance.value} vectors but its record says "
                f"{record.dim}-d {record.metric}: use another QDRANT_COLLECTION"
            )

    def _create(self) -> None:
        """Create the collection on the first add (after the caller computed its vectors)."""
        assert self.record is not None
        if self.client.collection_exists(self.collection):  # another process created it since we opened
            self._check_existing()
            self._exists = True
            return
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=self.record.dim, distance=_DISTANCES[self.record.metric]),
            metadata={RECORD_KEY: {**self.record.as_dict(), "format": 1}},
        )
        kept = getattr(self.client.get_collection(self.collection).config, "metadata", None) or {}
        if RECORD_KEY not in kept:  # a server too old for collection metadata drops it silently
            self.client.delete_collection(self.collection)
            raise UserError(
                f"the Qdrant server of {self.where} does not keep collection metadata, so the gallery cannot "
                "record its embedder: upgrade the server"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")  # local mode says so
            self.client.create_payload_index(
                self.collection, "name", models.PayloadSchemaType.KEYWORD, wait=True
            )
        self._exists = True
        log.info("created %s for %s", self.where, self.record.model_id)

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the gallery is closed")

    def _require_record(self) -> GalleryRecord:
        self._require_open()
        if self.record is None:
            raise UserError(f"no gallery at {self.where} yet: enroll with an embedder model to create it")
        return self.record

    def _count(self, name: str | None = None) -> int:
        if not self._exists:
            return 0
        response = self.client.count(
            self.collection, count_filter=_name_filter(name) if name else None, exact=True
        )
        return response.count

    def add(self, name: str, vectors: np.ndarray, meta: PointMeta = None) -> int:
        """Store each row as a point of `name` in one upsert request; returns how many were added."""
        record = self._require_record()
        check_name(name)
        array = check_vectors(vectors, record.dim)
        payloads = point_payloads(name, len(array), meta)
        if len(array) == 0:
            return 0
        points = [
            models.PointStruct(id=str(uuid.uuid4()), vector=row.tolist(), payload=payload)
            for row, payload in zip(array, payloads, strict=True)
        ]
        with self._server_errors("add to"):
            if not self._exists:
                self._create()
            self.client.upsert(self.collection, points=points, wait=True)
        return len(points)

    def search(self, vectors: np.ndarray, k: int = 1) -> list[list[Match]]:
        self._require_open()
        if self.record is None:  # opened without a spec and nothing enrolled yet
            return [[] for _ in np.atleast_2d(vectors)]
        array = check_vectors(vectors, self.record.dim)
        with self._server_errors("search"):
            return search_per_person(self._query, array, k, self._count(), self.record.metric)

    def _query(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        requests = [
            models.QueryRequest(query=row.tolist(), limit=limit, with_payload=["name"]) for row in vectors
        ]
        responses = self.client.query_batch_points(self.collection, requests)
        return [[(hit.payload["name"], hit.score) for hit in response.points] for response in responses]

    def remove(self, name: str) -> int:
        """Delete every point of `name` in one request; returns how many were removed (0 if unknown)."""
        self._require_open()
        with self._server_errors("remove from"):
            count = self._count(name)
            if count:
                selector = models.FilterSelector(filter=_name_filter(name))
                self.client.delete(self.collection, points_selector=selector, wait=True)
        return count

    def list(self) -> dict[str, int]:
        """Persons and their number of embeddings, sorted by name."""
        self._require_open()
        with self._server_errors("list"):
            total = self._count()
            if total == 0:
                return {}
            response = self.client.facet(self.collection, "name", limit=total, exact=True)
        hits = sorted(response.hits, key=lambda hit: str(hit.value))
        return {str(hit.value): hit.count for hit in hits if hit.count > 0}

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
        if not self._exists:
            return []
        out: list[tuple[dict[str, Any], Any]] = []
        offset = None
        with self._server_errors("read"):
            while True:
                page, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=_name_filter(name) if name else None,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
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

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> ServerGallery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerGallery({self.where}, {self.record.model_id if self.record else None})"


def _name_filter(name: str) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key="name", match=models.MatchValue(value=name))])


def connect(host: str, port: int, api_key: str | None, https: bool) -> tuple[QdrantClient, str]:
    """A client for the server at host (or a full URL in host) and a label for messages."""
    # No version check at construction: it is a request of its own whose failure is only a warning; the first
    # real call reports an unreachable or refusing server as a UserError instead.
    if "://" in host:
        client = QdrantClient(url=host, api_key=api_key, check_compatibility=False)
        return client, mask_url(host)
    client = QdrantClient(host=host, port=port, api_key=api_key, https=https, check_compatibility=False)
    return client, f"{'https' if https else 'http'}://{host}:{port}"
