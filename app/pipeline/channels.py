"""A stage's inputs: one bounded queue per upstream producer, read fairly.

A shared stage (detection serving every camera) gets one queue per camera rather than one queue for all:
a file read at full speed would otherwise fill a shared queue and a live camera's frames would find it full
and be dropped, and a stalled camera could never hold the others back anyway. `FairInbox` takes from the
queues in turn (round robin, one message each per round), so a batch holds frames of every stream that has
some and no stream waits behind another's backlog.

Waiting on several `multiprocessing.Queue`s at once uses their reading pipe ends with
`multiprocessing.connection.wait`: a queue has no public handle for that, but `_reader` is the connection
its `get()` reads from. Plain `queue.Queue`s (in-process tests) are polled instead. Looking for a message
asks one `select.poll` (made once) which pipes have data, then reads only those: trying each queue in turn
cost ~3 us a queue (its lock, a poll, an exception), ~50 us for 16 empty ones, once a batch at least.
"""

from __future__ import annotations

import queue
import select
import time
from multiprocessing.connection import Connection, wait
from typing import Any

_POLL_FALLBACK_S = 0.002  # plain queues cannot be waited on together: how often to look again


class FairInbox:
    """Round-robin reads over one or more queues; `get` blocks (bounded), `get_nowait` never does."""

    def __init__(self, queues: list[Any]) -> None:
        if not queues:
            raise ValueError("an inbox needs at least one queue")
        self.queues = list(queues)
        self._next = 0
        readers: list[Connection] = [r for q in self.queues if (r := getattr(q, "_reader", None)) is not None]
        self._readers = readers if len(readers) == len(self.queues) else None
        self._poller: Any = None
        self._fds: list[int] = []
        self._ready: set[int] = set()
        if self._readers is not None and len(self.queues) > 1 and hasattr(select, "poll"):
            self._poller = select.poll()
            self._fds = [r.fileno() for r in self._readers]
            for fd in self._fds:
                self._poller.register(fd, select.POLLIN)

    def get_nowait(self) -> Any:
        """The next message from the next queue (in turn) that has one; queue.Empty when none has."""
        n = len(self.queues)
        ready: set[int] | None = None
        if self._poller is not None:
            # The pipes found with data by the last poll and not read since: one poll serves a whole round.
            if not self._ready:
                self._ready = {fd for fd, _ in self._poller.poll(0)}
                if not self._ready:
                    raise queue.Empty
            ready = self._ready
        for step in range(n):
            i = (self._next + step) % n
            if ready is not None:
                if self._fds[i] not in ready:
                    continue
                ready.discard(self._fds[i])
            try:
                msg = self.queues[i].get_nowait()
            except queue.Empty:
                continue
            self._next = (i + 1) % n
            return msg
        raise queue.Empty

    def ready(self) -> bool:
        """Whether some queue has a message now (a hint: `get_nowait` may still find none)."""
        if self._poller is not None:
            return bool(self._ready) or bool(self._poller.poll(0))
        return any(not q.empty() for q in self.queues)

    def get(self, timeout: float) -> Any:
        """The next message, waiting up to `timeout` seconds for one; queue.Empty after that."""
        if len(self.queues) == 1:
            return self.queues[0].get(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise queue.Empty
            if self._readers is not None:
                wait(self._readers, remaining)
            else:
                time.sleep(min(remaining, _POLL_FALLBACK_S))
