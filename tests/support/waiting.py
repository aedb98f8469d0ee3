"""Waiting on a condition in tests: the timeout is a failure guard on a loaded machine, never a measurement.

Tests assert what happened (an event, an order, a count, a schedule read off an injected clock), not how
long it took; `GUARD_S` is long enough that only a hang reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

GUARD_S = 60.0  # a failure guard: only a hang takes this long, however loaded the machine


def wait_until(condition: Callable[[], object], what: str, timeout: float = GUARD_S, poll_s: float = 0.02):
    """Poll `condition` until it is true and return its value; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll_s)
    return value
