"""Waiting on a condition in tests: the timeout is a failure guard on a loaded machine, never a measurement.

Tests assert what happened (an event, an order, a count, a schedule read off an injected clock), not how
long it took; `GUARD_S` is long enough that only a hang reaches it. The guard is a timer that sets an event,
so no assertion reads the clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

GUARD_S = 60.0  # a failure guard: only a hang takes this long, however loaded the machine


@contextmanager
def guard(timeout: float = GUARD_S) -> Iterator[threading.Event]:
    """An event a timer sets after `timeout`: a loop checks it to fail instead of hanging."""
    expired = threading.Event()
    timer = threading.Timer(timeout, expired.set)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def wait_until(condition: Callable[[], object], what: str, timeout: float = GUARD_S, poll_s: float = 0.02):
    """Poll `condition` until it is true and return its value; fail naming `what` if the guard fires."""
    with guard(timeout) as expired:
        while not (value := condition()):
            if expired.is_set():
                pytest.fail(f"gave up after the {timeout:.0f} s guard waiting for {what}")
            time.sleep(poll_s)
    return value
