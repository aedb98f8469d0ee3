"""A stage call that runs past a threshold, logged with where it is: what a latency spike is made of.

A live run's p99 is often one stall: one frame whose `process()` took 130 ms while its camera's next frames
queued behind it. The JSON summary shows that it happened, not where. With `SLOW_CALL_MS` set, each stage
process that consumes a queue keeps a watch thread: when one `process()` or `process_batch()` call has run
longer than the threshold, the thread reads the stage thread's stack once (`sys._current_frames`: no
signal, no tracing hook, the stage runs at full speed) and logs it in one line; when the call ends, a second
line gives its whole duration. Capture is not watched (a live camera's read waits for the camera by
design). Nothing is watched at 0, the default.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

STACK_FRAMES = 10  # innermost frames shown: deep enough to pass the stage runner and reach the stage's code


class SlowCallWatch:
    """Watches one thread's stage calls; `begin`/`end` bracket each call (cheap: two stores and a clock)."""

    def __init__(
        self,
        node: str,
        threshold_s: float,
        *,
        thread_id: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        frames: Callable[[], dict[int, FrameType]] = sys._current_frames,
    ) -> None:
        self.node = node
        self.threshold_s = float(threshold_s)
        self.thread_id = threading.get_ident() if thread_id is None else thread_id
        self.clock = clock
        self.frames = frames
        self.reported = 0  # calls caught running past the threshold
        self._what = ""
        self._since: float | None = None  # start of the call in progress
        self._caught = False  # the call in progress was logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, what: str) -> None:
        self._what = what
        self._caught = False
        self._since = self.clock()

    def end(self) -> None:
        since, self._since = self._since, None
        if since is not None and self._caught:
            took = self.clock() - since
            log.warning("slow call: %s %s() took %.0f ms in all", self.node, self._what, 1000 * took)

    def check(self) -> bool:
        """Log the watched thread's stack if its call has run past the threshold (once a call). True if so."""
        since = self._since
        if since is None or self._caught:
            return False
        running = self.clock() - since
        if running < self.threshold_s:
            return False
        frame = self.frames().get(self.thread_id)
        if self._since != since:  # the call ended meanwhile: that stack would be the next call's
            return False
        self._caught = True
        self.reported += 1
        log.warning("slow call: %s %s() has run %.0f ms (SLOW_CALL_MS %.0f); at %s", self.node, self._what,
                    1000 * running, 1000 * self.threshold_s, where(frame))  # fmt: skip
        return True

    def start(self) -> None:
        """Check in a daemon thread, a few times per threshold, until `stop`."""
        poll = min(max(self.threshold_s / 4, 0.001), 0.05)

        def watch() -> None:
            while not self._stop.wait(poll):
                self.check()

        self._thread = threading.Thread(target=watch, name=f"slow-calls-{self.node}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)


def where(frame: FrameType | None, depth: int = STACK_FRAMES) -> str:
    """A stack in one line, outermost first: `file:line function > ... > file:line function`."""
    if frame is None:
        return "(no stack)"
    entries = traceback.extract_stack(frame)[-depth:]
    return " > ".join(f"{_short(e.filename)}:{e.lineno} {e.name}" for e in entries)


def _short(path: str) -> str:
    """The path from the project's folder on (app/stages/recognize.py), or the file name for libraries."""
    parts = path.replace("\\", "/").split("/")
    for anchor in ("app", "testbench", "tests"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
    return parts[-1]
