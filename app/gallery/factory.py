"""Pick the gallery engine from the settings: a Qdrant server when QDRANT_HOST is set, else embedded."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from app.config import Settings
from app.errors import UserError
from app.gallery.base import EmbedderIdentity, Gallery
from app.url_masking import mask_url

if TYPE_CHECKING:
    from qdrant_client import QdrantClient


def gallery_location(settings: Settings) -> str:
    """Where the gallery of these settings lives, for messages."""
    if settings.qdrant_host:
        scheme = "https" if settings.qdrant_https else "http"
        host = settings.qdrant_host
        server = mask_url(host) if "://" in host else f"{scheme}://{host}:{settings.qdrant_port}"
        return f"{server} collection {settings.qdrant_collection!r}"
    return str(settings.qdrant_path / settings.qdrant_collection)


def open_gallery(
    settings: Settings, spec: EmbedderIdentity | None, client: QdrantClient | None = None
) -> Gallery:
    """The gallery for `spec`'s embedder: `<qdrant_path>/<qdrant_collection>` through qdrant-edge, or the
    collection `qdrant_collection` of the server at `qdrant_host` (or of an injected qdrant-client `client`).

    `spec` None opens the gallery with whatever embedder built it (list/remove need no model); adding to a
    gallery that does not exist yet then fails. Raises UserError when the gallery was built by another
    embedder, is held by another process, or the server cannot be reached.
    """
    collection = settings.qdrant_collection
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}", collection):
        # it names a folder of the embedded gallery, so no separators or dot-names
        raise UserError(
            f"FACEPIPE_QDRANT_COLLECTION={collection!r} is not a valid name: "
            "use letters, digits, '_', '-', '.'"
        )
    if client is not None or settings.qdrant_host:
        # qdrant-client is imported only here: it is slow to import and the embedded path does not need it
        from app.gallery.server import ServerGallery, connect

        if client is None:
            assert settings.qdrant_host is not None
            client, where = connect(
                settings.qdrant_host, settings.qdrant_port, settings.qdrant_api_key, settings.qdrant_https
            )
        else:
            where = "injected Qdrant client"
        return ServerGallery(client, settings.qdrant_collection, spec, where=where)

    from app.gallery.edge import EdgeGallery

    return EdgeGallery(settings.qdrant_path / settings.qdrant_collection, spec)
