"""Face gallery on Qdrant: embedded (qdrant-edge) by default, a Qdrant server when QDRANT_HOST is set."""

from app.gallery.base import Gallery, GalleryInfo, GalleryInUseError, GalleryMismatchError, Match
from app.gallery.factory import gallery_location, open_gallery
from app.gallery.integrity import GalleryDamagedError

__all__ = [
    "Gallery",
    "GalleryDamagedError",
    "GalleryInUseError",
    "GalleryInfo",
    "GalleryMismatchError",
    "Match",
    "gallery_location",
    "open_gallery",
]
