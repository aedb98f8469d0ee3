"""Face tracking (ByteTrack): boxes across frames; who is on a track is app.recognition.identity's job."""

from app.tracking.bytetrack import ByteTracker
from app.tracking.config import TrackerConfig
from app.tracking.track import Track, TrackState

__all__ = [
    "ByteTracker",
    "Track",
    "TrackState",
    "TrackerConfig",
]
