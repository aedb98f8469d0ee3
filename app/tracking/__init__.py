"""Face tracking (ByteTrack) and per-track identity voting."""

from app.tracking.bytetrack import ByteTracker
from app.tracking.config import IdentityConfig, TrackerConfig
from app.tracking.identity import IdentityCounters, TrackIdentities, TrackLabel
from app.tracking.track import Track, TrackState

__all__ = [
    "ByteTracker",
    "IdentityConfig",
    "IdentityCounters",
    "Track",
    "TrackIdentities",
    "TrackLabel",
    "TrackState",
    "TrackerConfig",
]
