"""Face gallery on Qdrant: embedded (qdrant-edge) by default, a Qdrant server when QDRANT_HOST is set."""

from app.gallery.base import Gallery, GalleryInfo, GalleryInUseError, GalleryMismatchError, Match
from app.gallery.factory import gallery_location, open_gallery

__all__ = [
    "Gallery",
    "GalleryInUseError",
    "GalleryInfo",
    "GalleryMismatchError",
    "Match",
    "gallery_location",
    "open_gallery",
]
