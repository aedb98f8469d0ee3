"""Name look-ahead for recordings: a track named on frame n also names its frames n-k..n-1 still held.

A track's name needs evidence from several views (identity.py), so on a live camera its first frames are
shown "pending". A recording has no viewer waiting on each frame: holding a file stream's last `frames`
outputs before they go on lets a name decided within that window label the track's earlier, still-held
frames too (the whole appearance is named, as a person reviewing the video would). Only "pending" labels
are filled in, and only with the name the track has now (its latest label): a label already decided
("unknown", or a name) is never changed, and a track whose latest label is not a name (in doubt after a
crossing, restarted, decided unknown) or another name than the one it was first given fills nothing.
Only a track's first views are filled, before it was
ever named: a named track that reads "pending" again is in doubt (the tracker may have handed it another
face at a crossing), and a later agreement says its own face is back, not that the doubted frames were it.
Nor is a row whose box overlaps another face's on that frame (`overlap_iou`): where two faces cross, the
tracker may have swapped them. Measured on the hard tracking scenario (testbench/eval_tracking.py): without
these two rules, look-ahead put a name on 2 face-frames of the wrong person (seed 1); with them none.

Pure and generic over what is held (the recognize stage holds `TrackedFaces`, the tracking evaluation its
per-frame labels): `push` takes a frame's payload with the raw track ids and labels behind it and returns
the payloads released (oldest first, each with its filled-in labels applied through `relabel`); `drain`
releases the rest at the end of the stream. Frames come out in the order they went in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from app.recognition.identity import TrackLabel
from app.recognition.identity_config import IdentityConfig
from app.tracking.matching import box_iou

T = TypeVar("T")

# Rows overlapping another face this much are never filled in: the tracker may have swapped the two faces.
# The identity manager's own "the overlap has cleared" level.
OVERLAP_IOU = IdentityConfig().clear_iou


@dataclass(slots=True)
class _Held(Generic[T]):
    payload: T
    pending: list[tuple[int, int]]  # (row in the payload, track id) of the rows still "pending"


class NameLookahead(Generic[T]):
    """Holds up to `frames` payloads of one stream; `relabel(payload, row, label)` fills a held row in."""

    def __init__(
        self, frames: int, relabel: Callable[[T, int, TrackLabel], None], overlap_iou: float = OVERLAP_IOU
    ) -> None:
        if frames < 0:
            raise ValueError(f"look-ahead frames must be >= 0, got {frames}")
        self.frames = frames
        self.overlap_iou = overlap_iou
        self._relabel = relabel
        self._first_name: dict[int, str | None] = {}  # a track's first name (its later pending = doubt)
        self._held: deque[_Held[T]] = deque()
        self._latest: dict[int, tuple[TrackLabel, int]] = {}  # track id -> its latest label, frame of it
        self._count = 0
        self.filled = 0  # rows named by look-ahead (run total)

    def push(
        self,
        payload: T,
        track_ids: Sequence[int],
        labels: Mapping[int, TrackLabel],
        boxes: np.ndarray | None = None,
    ) -> list[T]:
        """Hold this frame's payload (its rows are `track_ids`, labelled by `labels`, with their `boxes`
        (N, 4) where known); the frames released."""
        self._count += 1
        crossing = self._crossing(boxes, len(track_ids))
        pending = []
        for row, track_id in enumerate(track_ids):
            label = labels.get(track_id)
            first_views = track_id not in self._first_name and not crossing[row]
            if first_views and (label is None or label.status == "pending"):
                pending.append((row, track_id))
            if label is not None:
                self._latest[track_id] = (label, self._count)
                if label.status == "known":
                    self._first_name.setdefault(track_id, label.name)
        self._held.append(_Held(payload, pending))
        out = []
        while len(self._held) > self.frames:
            out.append(self._release())
        if self._count % 64 == 0:  # tracks not seen for longer than the window name nothing held
            horizon = self._count - self.frames - 1
            self._latest = {t: v for t, v in self._latest.items() if v[1] >= horizon}
        return out

    def _crossing(self, boxes: np.ndarray | None, rows: int) -> list[bool]:
        """Per row: whether its box overlaps another row's by `overlap_iou` or more."""
        if boxes is None or rows < 2:
            return [False] * rows
        overlap = box_iou(np.asarray(boxes, np.float64), np.asarray(boxes, np.float64))
        np.fill_diagonal(overlap, 0.0)
        return (overlap.max(axis=1) >= self.overlap_iou).tolist()

    def drain(self) -> list[T]:
        """Release every held frame (the stream ended)."""
        return [self._release() for _ in range(len(self._held))]

    def __len__(self) -> int:
        return len(self._held)

    def _release(self) -> T:
        held = self._held.popleft()
        for row, track_id in held.pending:
            latest = self._latest.get(track_id)
            # Only the name the track was first given: a name changed since (a take-over) fills nothing.
            if (
                latest is not None
                and latest[0].status == "known"
                and latest[0].name == self._first_name[track_id]
            ):
                self._relabel(held.payload, row, latest[0])
                self.filled += 1
        return held.payload
