"""One tracked face: its Kalman state, its latest detection (box, score, landmarks) and its life cycle.

States (ByteTrack):
    NEW      created from a high-score detection, not yet confirmed (no id yet, never reported)
    TRACKED  matched on the current frame; reported once confirmed
    LOST     not matched; kept `max_time_lost` frames so that it can be re-found under the same id
    REMOVED  gone for good (an unconfirmed track missed once, or a lost track timed out)

A track is confirmed on its second matched frame (or at once on the tracker's first frame, as in
ByteTrack), and only then gets its id, so reported ids have no gaps from one-frame false positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from app.tracking.kalman import xyah_to_xyxy


class TrackState(IntEnum):
    NEW = 0
    TRACKED = 1
    LOST = 2
    REMOVED = 3


# The states as module constants (the same members): reading a member off its enum class costs ~0.2 us,
# and the tracker compares states several times per track per frame on every camera.
NEW, TRACKED, LOST, REMOVED = TrackState.NEW, TrackState.TRACKED, TrackState.LOST, TrackState.REMOVED


@dataclass(eq=False)
class Track:
    """A face track. Mutated by the tracker only; read by the recognition stage and the identity manager."""

    mean: np.ndarray  # (8,) Kalman state cx, cy, a, h and their velocities
    covariance: np.ndarray  # (8, 8)
    score: float  # detection score of the latest match
    detection_box: np.ndarray  # (4,) x1, y1, x2, y2 of the latest matched detection
    landmarks: np.ndarray | None  # (5, 2) of the latest matched detection; travel with the track
    start_frame: int
    frame_id: int  # last frame on which a detection was matched
    track_id: int = 0  # 0 until confirmed; then unique within its tracker until reset()
    state: TrackState = NEW
    is_confirmed: bool = False
    tracklet_len: int = 0  # consecutive matched frames since (re)activation
    detection_index: int = -1  # index of the matched detection in this frame's input, -1 if none
    refound_frame: int = -1  # last frame on which the track came back from LOST
    weak_start: bool = False  # started from a box under the new-track threshold (tracker's weak start)
    hits_to_confirm: int = 2  # matched frames an unconfirmed track needs (more when started from a weak box)
    hits: int = 1  # matched frames so far (the starting one included)

    @property
    def box(self) -> np.ndarray:
        """(4,) x1, y1, x2, y2 of the Kalman estimate (smoothed; the prediction while lost)."""
        box: np.ndarray = xyah_to_xyxy(self.mean[None, :4])[0]
        return box

    @property
    def is_active(self) -> bool:
        """Tracked on the current frame and confirmed: what the tracker reports."""
        return self.state == TRACKED and self.is_confirmed

    def mark_matched(
        self,
        frame_id: int,
        mean: np.ndarray,
        covariance: np.ndarray,
        box: np.ndarray,
        score: float,
        landmarks: np.ndarray | None,
        detection_index: int,
        owned: bool = False,
    ) -> None:
        """A detection was associated on this frame (the Kalman update is done by the caller, batched).

        `box` and `landmarks` are copied, unless `owned`: the caller hands over float64 / float32 arrays
        nobody else holds (the tracker's rows of one gathered copy per frame), kept as they are."""
        if self.state == REMOVED:
            raise ValueError("a removed track cannot be matched")
        self.hits += 1
        if self.state == LOST:
            self.refound_frame = frame_id
            self.tracklet_len = 0
        else:
            self.tracklet_len += 1
        self.mean, self.covariance = mean, covariance
        if owned:
            self.detection_box, self.landmarks = box, landmarks
        else:
            self.detection_box = np.asarray(box, dtype=np.float64).copy()
            self.landmarks = None if landmarks is None else np.asarray(landmarks, dtype=np.float32).copy()
        self.score = float(score)
        self.detection_index = detection_index
        self.frame_id = frame_id
        self.state = TRACKED

    def confirm(self, track_id: int) -> None:
        if self.is_confirmed:
            raise ValueError(f"track {self.track_id} is already confirmed")
        self.track_id = track_id
        self.is_confirmed = True

    def mark_lost(self) -> None:
        if self.state == REMOVED:
            raise ValueError("a removed track cannot be lost")
        self.state = LOST
        self.detection_index = -1

    def mark_removed(self) -> None:
        self.state = REMOVED
        self.detection_index = -1
