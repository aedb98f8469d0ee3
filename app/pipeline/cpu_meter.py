"""CPU accounting per stage process: how much CPU a process spends per frame outside its model.

Each stage process measures its own CPU time (all its threads, `time.process_time`) from the start signal
to the end of its loop, and a stage with a model adds up the CPU time spent inside its model calls
(`ModelCpu.measure`). The runner logs both at the end, in one line per process (`CPU_LINE`), which the
pipeline benchmark reads back from the stage log: CPU per frame minus model CPU per frame is what the
process's own loop costs (queues, claims, conversions, tracking arithmetic), the part that limits a GPU run
where the model itself takes little host time.

Model CPU is the process's CPU while a model call runs (a torch call's launches and synchronisation, an
ONNX Runtime call's compute on all its threads); other threads of the process running meanwhile (a queue's
feeder) are counted as model time too, a small error next to the model's own time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# One line a process, logged at INFO when its loop ends; `parse_cpu_lines` reads them back.
CPU_LINE_FORMAT = "stage cpu %s: %.4f s in the loop, %.4f s in the model, %d items"
CPU_LINE = re.compile(r"stage cpu (\S+): ([\d.]+) s in the loop, ([\d.]+) s in the model, (\d+) items")


class ModelCpu:
    """CPU seconds a process spends inside model calls (wrap each call in `measure()`); `clock` is the
    process's CPU clock (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        self.clock = clock
        self.seconds = 0.0
        self.calls = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.seconds += self.clock() - start
            self.calls += 1

    def reset(self) -> None:
        """Forget warm-up calls: the loop's accounting starts at the start signal."""
        self.seconds = 0.0
        self.calls = 0


@dataclass(frozen=True)
class StageCpu:
    """One process's CPU over its loop: all of it, the part inside model calls, the items it handled."""

    node: str
    loop_s: float
    model_s: float
    items: int

    def line(self) -> str:
        return CPU_LINE_FORMAT % (self.node, self.loop_s, self.model_s, self.items)


def parse_cpu_lines(text: str) -> dict[str, StageCpu]:
    """Every process's `StageCpu` in a stage log, by node name (the last line wins for a restarted one)."""
    out = {}
    for match in CPU_LINE.finditer(text):
        node, loop_s, model_s, items = match.groups()
        out[node] = StageCpu(node, float(loop_s), float(model_s), int(items))
    return out
