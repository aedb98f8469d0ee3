"""Where a restartable source's processes leave off: shared doubles that outlive each process.

The supervisor creates them before the source's first process is spawned (so every process of it gets the
same ones) and counts restarts in them; the source writes where it is after each frame, and a restarted
process goes on from there. One writer at a time (the living process; the supervisor writes `restarts` only
between a death and the next spawn), so there is no lock.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from multiprocessing.context import BaseContext

SIZE = 8  # doubles; room for more fields without changing what the supervisor allocates
# The layout: index -> field (restarts is the supervisor's, the rest the source's).
_RESTARTS, _SEQ, _FRAMES_READ, _LIVE_START, _SEGMENT = range(5)


class RestartState:
    """Named fields over the shared doubles (a `RawArray` in a run, any list of floats in a test)."""

    __slots__ = ("_values",)

    def __init__(self, values: MutableSequence[float]) -> None:
        if len(values) < SIZE:
            raise ValueError(f"restart state needs {SIZE} values, got {len(values)}")
        self._values = values

    @classmethod
    def shared(cls, ctx: BaseContext) -> RestartState:
        """Zeroed doubles in shared memory, to hand to a stage before its process is spawned."""
        values: MutableSequence[float] = ctx.RawArray("d", SIZE)
        return cls(values)

    @property
    def restarts(self) -> int:
        """How often the supervisor restarted this source (0 in its first process)."""
        return int(self._values[_RESTARTS])

    @restarts.setter
    def restarts(self, count: int) -> None:
        self._values[_RESTARTS] = float(count)

    @property
    def seq(self) -> int:
        """The last frame sequence number published."""
        return int(self._values[_SEQ])

    @seq.setter
    def seq(self, value: int) -> None:
        self._values[_SEQ] = float(value)

    @property
    def frames_read(self) -> int:
        return int(self._values[_FRAMES_READ])

    @frames_read.setter
    def frames_read(self, value: int) -> None:
        self._values[_FRAMES_READ] = float(value)

    @property
    def live_start(self) -> float | None:
        """When the live stream's clock started (monotonic seconds), None before its first frame."""
        return float(self._values[_LIVE_START]) or None

    @live_start.setter
    def live_start(self, value: float | None) -> None:
        self._values[_LIVE_START] = value or 0.0

    @property
    def segment(self) -> int:
        return int(self._values[_SEGMENT])

    @segment.setter
    def segment(self, value: int) -> None:
        self._values[_SEGMENT] = float(value)
