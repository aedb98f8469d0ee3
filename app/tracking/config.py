"""Typed settings of the face tracker (ByteTrack); identity voting has its own (recognition.identity_config).

ByteTrack's reference defaults (ifzhang/ByteTrack: track_thresh 0.5, track_buffer 30, match_thresh 0.8,
low-score floor 0.1, second-stage IoU gate 0.5, unconfirmed gate 0.7, new tracks from track_thresh + 0.1)
were made for pedestrians under a YOLOX detector. What changes for faces under RetinaFace:

- `high_thresh` 0.5 -> 0.6: RetinaFace gives real, visible faces scores above 0.9; its false positives
  (textures, ears, hands) sit around 0.5-0.8. 0.6 equals the pipeline's default `det_threshold`, so the
  first stage sees the same boxes the detector would have shown. Scores between 0.1 and 0.6 (blurred,
  turning, half-occluded faces) are the "byte" of ByteTrack: they only extend existing tracks.
- New tracks need `high_thresh + new_track_margin` = 0.7, as in the paper (+0.1).
- `match_thresh` 0.8 (kept): the first-stage cost is 1 - IoU * score, so a face with score ~0.95 still
  matches down to IoU ~0.21. Faces are small and move fast relative to their size (a 40 px face moving
  10 px/frame keeps IoU ~0.6 with its prediction), so a stricter gate loses tracks on head turns.
- `track_buffer` 30 frames at 30 fps (kept): one second of memory bridges blinks of the detector and
  short occlusions by a hand or a passer-by; a longer absence is bridged by identity re-linking
  (`IdentityConfig.relink_window`), which needs no motion model and is not fooled by a face that
  re-appears somewhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack association thresholds (scores in detector units, gates in cost units 0..1)."""

    high_thresh: float = 0.6  # detections at or above it go to the first association
    low_thresh: float = 0.1  # detections above it (and below high_thresh) go to the second one
    new_track_margin: float = 0.1  # a leftover detection starts a track at >= high_thresh + margin
    match_thresh: float = 0.8  # first stage: max cost 1 - IoU * score against tracked + lost tracks
    second_match_thresh: float = 0.5  # second stage: max 1 - IoU, low-score detections vs tracked tracks
    unconfirmed_match_thresh: float = 0.7  # third stage: max cost for tracks seen on one frame only
    track_buffer: int = 30  # frames a lost track is kept at 30 fps (scaled by the real frame rate)
    duplicate_iou_distance: float = 0.15  # a tracked and a lost track closer than this are one face
    fuse_score: bool = True  # weight the first-stage IoU by the detection score (ByteTrack, not MOT20)
    # Weak starts: a leftover detection scoring >= weak_start_thresh (but under new_track_thresh) starts a
    # tentative track, confirmed only after weak_confirm_hits matched frames in a row (any score above
    # low_thresh); 0 turns it off. Small faces (30-50 px) score 0.1-0.6 for their whole walk: on the hard
    # scenario (3 seeds) 257 enrolled face-frames were detected only that weakly, 176 after this. 0.3 started
    # a few more, and a few false tracks on the standard scenario (MOTA 0.987 -> 0.985); 0.4 none.
    weak_start_thresh: float = 0.4
    weak_confirm_hits: int = 3
    # A track lost up to this many frames ago also takes part in the second association (0: tracked ones
    # only, as ByteTrack): a small face detected at 0.1-0.3 with a frame of nothing in between. Hard
    # scenario (3 seeds): enrolled face-frames detected without a track 176 -> 101 (3 frames: 139; 30 the
    # same as 10), MOTA 0.905/0.815/0.816 -> 0.910/0.828/0.841, ID switches 12 -> 11.
    low_refind_frames: int = 10
    weak_start_iou: float = 0.3  # ... and never from a box overlapping a track this much (a duplicate box)

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_thresh < self.high_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= low_thresh < high_thresh <= 1, got {self.low_thresh}, {self.high_thresh}"
            )
        for name in ("match_thresh", "second_match_thresh", "unconfirmed_match_thresh"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.weak_confirm_hits < 0:
            raise ValueError(f"weak_confirm_hits must be >= 0, got {self.weak_confirm_hits}")
        if self.track_buffer < 0:
            raise ValueError(f"track_buffer must be >= 0, got {self.track_buffer}")

    @property
    def new_track_thresh(self) -> float:
        return self.high_thresh + self.new_track_margin

    def max_time_lost(self, frame_rate: float) -> int:
        """Frames a lost track survives: track_buffer is given for 30 fps video."""
        return int(max(frame_rate, 1e-6) / 30.0 * self.track_buffer)

    @classmethod
    def from_settings(cls, settings: Any) -> TrackerConfig:
        """Build from `app.config.Settings` (fields track_high_thresh, track_buffer, track_match_thresh)."""
        changes: dict[str, Any] = {}
        for setting, field_name in (
            ("track_high_thresh", "high_thresh"),
            ("track_buffer", "track_buffer"),
            ("track_match_thresh", "match_thresh"),
        ):
            value = getattr(settings, setting, None)
            if value is not None:
                changes[field_name] = value
        return cls(**changes)
