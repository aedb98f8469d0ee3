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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException

from app.errors import UserError, first_line
from app.gallery.base import EmbedderIdentity, GalleryRecord, QdrantGalleryBase
from app.url_masking import mask_url

log = logging.getLogger(__name__)

RECORD_KEY = "face_gallery"  # key of the embedder record inside the collection metadata
_DISTANCES = {"euclidean": models.Distance.EUCLID, "cosine": models.Distance.COSINE}


class ServerGallery(QdrantGalleryBase):
    """Gallery in collection `collection` of the Qdrant behind `client`; `where` names it in messages.

    The gallery owns `client` (closes it). `spec` None opens whatever embedder built the collection.
    """

    def __init__(
        self, client: QdrantClient, collection: str, spec: EmbedderIdentity | None, where: str = ""
    ) -> None:
        super().__init__(spec)
        self.client = client
        self.collection = collection
        self.where = f"{where or 'Qdrant'} collection {collection!r}"
        self._exists = False
        try:
            with self._engine_errors("open"):
                if client.collection_exists(collection):
                    self._check_existing()
                    self._exists = True
        except BaseException:
            self.close()  # the gallery owns its client, injected or not
            raise

    @contextlib.contextmanager
    def _engine_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except ApiException as exc:
            raise UserError(
                f"Qdrant failed to {action} the gallery at {self.where}: {first_line(exc)} "
                "(check QDRANT_HOST, QDRANT_PORT, QDRANT_API_KEY, QDRANT_HTTPS)"
            ) from None

    def _check_existing(self) -> None:
        config = self.client.get_collection(self.collection).config
        stored = (getattr(config, "metadata", None) or {}).get(RECORD_KEY)
        if stored is None:
            raise UserError(
                f"{self.where} was not made by this gallery (no embedder record in its metadata): "
                "use another FACEPIPE_QDRANT_COLLECTION"
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
                f"{record.dim}-d {record.metric}: use another FACEPIPE_QDRANT_COLLECTION"
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

    @property
    def _location(self) -> str:
        return self.where

    def _has_storage(self) -> bool:
        return self._exists

    def _count(self, name: str | None = None) -> int:
        if not self._exists:
            return 0
        response = self.client.count(
            self.collection, count_filter=_name_filter(name) if name else None, exact=True
        )
        return response.count

    def _upsert(self, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        points = [
            models.PointStruct(id=str(uuid.uuid4()), vector=row.tolist(), payload=payload)
            for row, payload in zip(vectors, payloads, strict=True)
        ]
        if not self._exists:
            self._create()
        self.client.upsert(self.collection, points=points, wait=True)

    def _query(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        requests = [
            models.QueryRequest(query=row.tolist(), limit=limit, with_payload=["name"]) for row in vectors
        ]
        responses = self.client.query_batch_points(self.collection, requests)
        # with_payload=["name"]: every hit carries a payload with the name
        return [
            [(cast(dict[str, Any], hit.payload)["name"], hit.score) for hit in response.points]
            for response in responses
        ]

    def _delete_name(self, name: str) -> None:
        selector = models.FilterSelector(filter=_name_filter(name))
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def _name_counts(self, limit: int) -> Iterable[tuple[str, int]]:
        response = self.client.facet(self.collection, "name", limit=limit, exact=True)
        return [(str(hit.value), hit.count) for hit in response.hits]

    def _scroll_page(
        self, name: str | None, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[Sequence[Any], Any]:
        return self.client.scroll(
            self.collection,
            scroll_filter=_name_filter(name) if name else None,
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=with_vectors,
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

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
