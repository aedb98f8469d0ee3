"""Typed settings of the face tracker (ByteTrack) and of the per-track identity voting.

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

from dataclasses import dataclass, fields
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

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_thresh < self.high_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= low_thresh < high_thresh <= 1, got {self.low_thresh}, {self.high_thresh}"
            )
        for name in ("match_thresh", "second_match_thresh", "unconfirmed_match_thresh"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
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


@dataclass(frozen=True)
class IdentityConfig:
    """When to embed a track's face and how much agreeing evidence names it (see identity.py)."""

    # -- when to embed --
    pending_interval: int = 2  # frames between embeddings while a track is still undecided
    max_pending_embeddings: int = 8  # after that many, an undecided track falls back to refresh_interval
    refresh_interval: int = 45  # frames between re-embeddings of a track decided as a known person
    # An "unknown" decision is revisited sooner: it is often an enrolled person's first poor view (on the
    # hamilton clip Lin's first embeddings score 0.41-0.43 against a 0.46+ threshold); strangers are few, so
    # the cost stays small. 10 frames: Lin named on 107/129 large-face frames instead of 27, no false names.
    unknown_refresh_interval: int = 10
    min_embed_gap: int = 5  # a clearly better view is embedded at most this often
    better_quality_ratio: float = 1.3  # "clearly better": quality above the best embedded one times this
    min_face_size: float = 16.0  # px (box height); smaller faces are not embedded at all
    min_inside: float = 0.85  # faces with less of their box inside the frame are not embedded (bad vectors)
    cross_iou: float = 0.2  # overlapping another track this much marks the identity for re-checking
    clear_iou: float = 0.05  # ... which happens once the overlap has dropped below this
    # -- face quality (each term in 0..1; quality = size * frontal * sharpness terms) --
    reference_face_size: float = 96.0  # px face height where the size term saturates
    reference_sharpness: float = 400.0  # Laplacian variance of a 64 px grey crop where sharpness saturates
    # (RetinaFace crops of sharp face photos measure 500-1700; blurred by sigma = face height / 50, 30-90)
    quality_floor: float = 0.05  # smallest vote weight, so even a poor view counts a little
    # -- voting --
    vote_decay: float = 0.85  # old votes fade by this per new embedding, so the label can recover
    min_evidence: float = 1.2  # weighted votes a label needs before it is given
    decision_margin: float = 0.8  # ... and its lead over the runner-up (another person or unknown)
    switch_margin: float = 1.5  # lead needed to change a label once given (hysteresis)
    match_margin: float = 0.03  # a match closer than this to a different person abstains (similarity units)
    confidence_band: float = 0.1  # votes just above threshold weigh less; full weight at threshold + band
    min_vote_strength: float = 0.25  # the weight factor of a vote exactly at threshold
    # A pending track is named on one embedding of quality >= fast_quality scoring >= threshold +
    # fast_margin (with the match_margin lead over anyone else): a clear view needs no second opinion.
    fast_quality: float = 0.6
    fast_margin: float = 0.06
    # -- memory --
    max_embeddings: int = 12  # embeddings kept per track for its aggregate (best quality first)
    relink_window: int = 300  # frames a vanished track is remembered (re-found id or re-linked by embedding)
    # Re-linking needs similarity >= threshold + relink_margin: "the same face moments ago", stricter than
    # "the same person". dlib on the demo: the same face back after 4 s 0.73; another photo of the same
    # person 0.56-0.59; strangers <= 0.30 (threshold 0.46-0.47).
    relink_margin: float = 0.2
    relink_attempts: int = 3  # a new track's first embeddings that are tried against vanished tracks

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"IdentityConfig.{f.name} must be >= 0, got {value}")
        if not 0.0 < self.vote_decay <= 1.0:
            raise ValueError(f"vote_decay must be in (0, 1], got {self.vote_decay}")
        if self.max_embeddings < 1:
            raise ValueError("max_embeddings must be >= 1")
