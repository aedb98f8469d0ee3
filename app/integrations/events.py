"""Recognition events leaving the sink process: a bounded queue the frame path never waits on.

The sink calls `EventFanout.publish(event, frame, faces)` for each recognition event: the snapshot is
written (when on) and its path added to the event, then the event is offered to a bounded multiprocessing
queue with `put_nowait`. A full queue drops the event and counts it (`dropped`, shared with the parent): a
stuck consumer must never slow the frames. The parent reads them with `EventQueue.get`.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.cameras import DEFAULT_CAMERA
from app.integrations.snapshots import SnapshotWriter
from app.pipeline.messages import TrackedFaces

EVENT_QUEUE_SIZE = 1000  # events between the sink and the parent; one a label change, so far more than enough

Event = dict[str, Any]


class EventQueue:
    """A bounded queue for events from the sink process to the parent, with a shared drop counter.

    Created in the parent (spawn context) and handed to the sink stage before its process starts.
    """

    def __init__(self, size: int = EVENT_QUEUE_SIZE) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.queue = ctx.Queue(maxsize=size)
        self._dropped = ctx.RawValue("q", 0)  # only the sink process writes it

    @property
    def dropped(self) -> int:
        return int(self._dropped.value)

    def offer(self, event: Event) -> bool:
        """Put without waiting; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self._dropped.value += 1
            return False
        return True

    def get(self, timeout: float) -> Event | None:
        try:
            return self.queue.get(timeout=timeout)
        except (queue.Empty, OSError, ValueError):  # empty, or closed at shutdown
            return None

    def close(self) -> None:
        self.queue.cancel_join_thread()  # never wait at exit for events nobody will read
        self.queue.close()


@dataclass
class EventFanout:
    """Everything the sink does with a recognition event besides the events file. Picklable: it travels to
    the sink process with the stage; `camera` names the source in every event."""

    camera: str = DEFAULT_CAMERA
    events: EventQueue | None = None
    snapshots: SnapshotWriter | None = None
    wall_clock: Callable[[], float] = time.time

    @property
    def active(self) -> bool:
        return self.events is not None or self.snapshots is not None

    def publish(self, event: Event, frame: np.ndarray | None, faces: TrackedFaces | None = None) -> Event:
        """`event` (the events-file fields) plus `camera`, `timestamp` (Unix seconds) and, with snapshots
        on and a frame given, `snapshot` (the crop's path; `faces` are drawn on a full-frame snapshot). The
        snapshot key is also set on `event` itself, so the events file references it too."""
        now = self.wall_clock()
        if self.snapshots is not None and frame is not None:
            path = self.snapshots.write(frame, event["box"], self.camera, event["track"], now, faces)
            if path is not None:
                event["snapshot"] = str(path)
        full = {**event, "camera": self.camera, "timestamp": round(now, 3)}
        if self.events is not None:
            self.events.offer(full)
        return full
