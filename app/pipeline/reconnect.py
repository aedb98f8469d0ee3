"""Capped exponential backoff: when to try again while something we depend on is away.

One `RetrySchedule` covers one outage (a camera that dropped, a gallery server that stopped answering):
the first attempt is due at once (most drops are blips), then each failure waits `first_s`, doubling up to
`cap_s`. Jitter spreads the reconnects of many clients of one server; it only ever shortens a delay (a
delay is scaled by a factor in [1 - jitter, 1]), so `cap_s` bounds the time from a source's return to the
next attempt whatever the jitter. Tests use `jitter=0` for exact schedules.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    first_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 1.0
    jitter: float = 0.2  # fraction a delay may be shortened by at random

    def __post_init__(self) -> None:
        if self.first_s <= 0 or self.cap_s < self.first_s or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid backoff policy {self}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th failed attempt in a row (1-based)."""
        if failures < 1:
            return 0.0
        # Bounded exponent: no overflow however long the outage lasts.
        base = min(self.cap_s, self.first_s * self.factor ** min(failures - 1, 64))
        if self.jitter and rng is not None:
            base *= 1.0 - self.jitter * rng.random()
        return base


# A camera: the next attempt comes at most 0.5 s after its return; an RTSP camera then still needs up to a
# keyframe interval (often 1 s) before the first frame decodes, and the whole must stay inside the 2 s the
# pipeline promises to resume in. Two attempts a second cost a refused connection each; an unreachable host
# paces itself by the open timeout.
SOURCE_BACKOFF = BackoffPolicy(first_s=0.1, factor=2.0, cap_s=0.5, jitter=0.2)
# A gallery server: searches are retried on the next frame that needs one once the delay has passed.
GALLERY_BACKOFF = BackoffPolicy(first_s=0.25, factor=2.0, cap_s=2.0, jitter=0.2)


class RetrySchedule:
    """Attempts during one outage: `due()` says when to try, `failed()` books a failure and the next delay."""

    def __init__(
        self,
        policy: BackoffPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.started = clock()
        self.failures = 0
        self.next_at = self.started  # the first attempt is due at once

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def wait_s(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self.next_at - self.clock())

    def failed(self) -> float:
        """Book a failed attempt; returns the delay until the next one."""
        self.failures += 1
        delay = self.policy.delay(self.failures, self.rng)
        self.next_at = self.clock() + delay
        return delay

    def elapsed_s(self) -> float:
        """Seconds since the outage began."""
        return self.clock() - self.started
