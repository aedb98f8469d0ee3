"""Name look-ahead for recordings: a track named on frame n also names its frames n-k..n-1 still held.

A track's name needs evidence from several views (identity.py), so on a live camera its first frames are
shown "pending". A recording has no viewer waiting on each frame: holding a file stream's last `frames`
outputs before they go on lets a name decided within that window label the track's earlier, still-held
frames too (the whole appearance is named, as a person reviewing the video would). Only "pending" labels
are filled in, and only with the name the track has now (its latest label): a label already decided
("unknown", or a name) is never changed, and a track whose latest label is not a name (in doubt after a
crossing, restarted, decided unknown) fills nothing, so look-ahead cannot flip a name or give a track a
name it does not hold.

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

from app.recognition.identity import TrackLabel

T = TypeVar("T")


@dataclass(slots=True)
class _Held(Generic[T]):
    payload: T
    pending: list[tuple[int, int]]  # (row in the payload, track id) of the rows still "pending"


class NameLookahead(Generic[T]):
    """Holds up to `frames` payloads of one stream; `relabel(payload, row, label)` fills a held row in."""

    def __init__(self, frames: int, relabel: Callable[[T, int, TrackLabel], None]) -> None:
        if frames < 0:
            raise ValueError(f"look-ahead frames must be >= 0, got {frames}")
        self.frames = frames
        self._relabel = relabel
        self._held: deque[_Held[T]] = deque()
        self._latest: dict[int, tuple[TrackLabel, int]] = {}  # track id -> its latest label, frame of it
        self._count = 0
        self.filled = 0  # rows named by look-ahead (run total)

    def push(self, payload: T, track_ids: Sequence[int], labels: Mapping[int, TrackLabel]) -> list[T]:
        """Hold this frame's payload (its rows are `track_ids`, labelled by `labels`); the frames released."""
        self._count += 1
        pending = []
        for row, track_id in enumerate(track_ids):
            label = labels.get(track_id)
            if label is None or label.status == "pending":
                pending.append((row, track_id))
            if label is not None:
                self._latest[track_id] = (label, self._count)
        self._held.append(_Held(payload, pending))
        out = []
        while len(self._held) > self.frames:
            out.append(self._release())
        if self._count % 64 == 0:  # tracks not seen for longer than the window name nothing held
            horizon = self._count - self.frames - 1
            self._latest = {t: v for t, v in self._latest.items() if v[1] >= horizon}
        return out

    def drain(self) -> list[T]:
        """Release every held frame (the stream ended)."""
        return [self._release() for _ in range(len(self._held))]

    def __len__(self) -> int:
        return len(self._held)

    def _release(self) -> T:
        held = self._held.popleft()
        for row, track_id in held.pending:
            latest = self._latest.get(track_id)
            if latest is not None and latest[0].status == "known":
                self._relabel(held.payload, row, latest[0])
                self.filled += 1
        return held.payload
