"""Where a restartable source's processes leave off: shared doubles that outlive each process.

The supervisor creates them before the source's first process is spawned (so every process of it gets the
same ones) and counts restarts in them; the source writes where it is after each frame, and a restarted
process goes on from there. One writer at a time (the living process; the supervisor writes `restarts` only
between a death and the next spawn), so there is no lock.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from multiprocessing.context import BaseContext
from typing import Any, Generic, TypeVar, overload

SIZE = 8  # doubles; room for more fields without changing what the supervisor allocates

T = TypeVar("T")


class _Field(Generic[T]):
    """One named double of the layout, read and written as a `T`."""

    def __init__(self, index: int, read: Callable[[float], T], write: Callable[[T], float]) -> None:
        self.index, self.read, self.write = index, read, write

    @overload
    def __get__(self, state: None, owner: type[Any]) -> _Field[T]: ...
    @overload
    def __get__(self, state: RestartState, owner: type[Any]) -> T: ...
    def __get__(self, state: RestartState | None, owner: type[Any]) -> T | _Field[T]:
        return self if state is None else self.read(state.values[self.index])

    def __set__(self, state: RestartState, value: T) -> None:
        state.values[self.index] = self.write(value)


def _time_or_none(value: float) -> float | None:
    return value or None  # 0.0 stands for "not yet": a monotonic clock is never exactly 0 by then


def _time_or_zero(value: float | None) -> float:
    return value or 0.0


class RestartState:
    """Named fields over the shared doubles (a `RawArray` in a run, any list of floats in a test)."""

    __slots__ = ("values",)

    # The layout, one double each. `restarts` is the supervisor's (0 in a source's first process), the rest
    # the source's: the last sequence number published, frames taken from the source, when the live clock
    # started (monotonic seconds; None before the first frame), the segment of the frames being published.
    restarts = _Field(0, int, float)
    seq = _Field(1, int, float)
    frames_read = _Field(2, int, float)
    live_start = _Field(3, _time_or_none, _time_or_zero)
    segment = _Field(4, int, float)

    def __init__(self, values: MutableSequence[float]) -> None:
        if len(values) < SIZE:
            raise ValueError(f"restart state needs {SIZE} values, got {len(values)}")
        self.values = values

    @classmethod
    def shared(cls, ctx: BaseContext) -> RestartState:
        """Zeroed doubles in shared memory, to hand to a stage before its process is spawned."""
        values: MutableSequence[float] = ctx.RawArray("d", SIZE)
        return cls(values)
