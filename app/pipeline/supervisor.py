"""The supervisor: starts the stage processes, runs the readiness handshake, watches them, stops them all.

Life of a run (all in the parent process, which never loads a model or opens the source):
1. Start one `spawn` process per stage, the source first, each with bounded queues to its neighbours and
   its own duplex control pipe. Every stage runs setup() (open the source, load models) in parallel, reports
   `Ready(info)`, or `Failed` with one line (e.g. a missing model file), which ends the run as a user error.
   When several stages fail, the one nearest the source is reported, whatever order they fail in.
2. With every stage ready, create the frame ring from the source's frame shape and send `Start` to every
   stage, the source last.
3. Watch control pipes and process sentinels: `FrameDone` feeds the metrics (a summary line every few
   seconds); the run ends on the first of: end of stream reaching the sink, the window closed (`Finished`),
   a stage failing (`Failed`) or dying (its sentinel fires), Ctrl-C / SIGTERM to the parent.
4. Stop: set the shared stop event; stages leave their loops within `POLL_S` and close (writers flush); any
   process still alive after `stop_timeout_s` is terminated, then killed. The ring is unlinked in a
   `finally`, so neither processes nor shared-memory segments outlive the run.

Stage deaths (seen within ~0.1 s: the watch loop waits on every process sentinel):
- The capture process of a live source (URL, webcam) is restarted, at most `source_restarts` times in
  `restart_window_s` (then the run stops, naming it). The ring and the queue to detection stay; what the
  dead process held is taken back first: the ring lock and the queue's write lock if it died holding them,
  and a slot it was writing. The new process continues sequence numbers and frame indices from the shared
  `restart_state` and starts a new segment (recognition resets its tracks). Until it is ready the other
  stages just wait for frames.
- A file source is not restarted: the run stops cleanly, naming the stage, with every output complete up to
  the last frame. Resuming a file exactly would need frame-accurate seeking, which FFmpeg does not promise
  for every file, and a capture that dies on a file mostly died on something in the file (a decoder crash)
  that a restart would meet again.
- Any other stage stops the run cleanly within ~2 s, naming it. Their state is expensive and not
  restartable mid-stream: a loaded model and its GPU context (detect), the tracker and identity votes
  (recognize), an open video writer (gui); a crash there is a bug to see, not to paper over.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from app.errors import UserError
from app.pipeline.frame_ring import FrameRing, FrameRingHandle
from app.pipeline.messages import Failed, Finished, FrameDone, FrameMeta, Ready, Start
from app.pipeline.metrics import PipelineMetrics
from app.pipeline.stage_runner import StageChannels, stage_process_main

log = logging.getLogger(__name__)
summary_log = logging.getLogger("app.pipeline.summary")  # the periodic line; the CLI shows it by default

RING_PREFIX = "facering"
RESTART_STATE_SIZE = 8  # shared doubles for a restartable source; [0] = how often it was restarted
SOURCE_READY_TIMEOUT_S = 60.0  # a restarted capture opens its source (bounded by its own timeouts) first
SETUP_FAILURE_SETTLE_S = 2.0  # how long earlier stages may take to report their own setup failure
_STUCK_LOCK_S = 0.5  # ring and queue locks are held for microseconds: longer means a dead holder
EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


@dataclass
class RunResult:
    """How a run ended. `summary` is None when the pipeline never started (setup failed or was cut short)."""

    stop_reason: str
    exit_code: int
    summary: dict[str, object] | None = None
    error: str | None = None  # one line for `error: ...` when the run could not start
    source_info: dict[str, object] = field(default_factory=dict)


@dataclass
class _Child:
    stage: Any
    process: Any
    control: Connection
    ready: bool = False
    ready_info: dict[str, object] = field(default_factory=dict)
    started: float = 0.0


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class Supervisor:
    """Runs a linear pipeline of stage objects (the first a source with `produce()`, the last a sink)."""

    def __init__(
        self,
        stages: list[Any],
        ring: FrameRingHandle,
        ring_slots: int,
        *,
        log_level: str = "WARNING",
        startup_timeout_s: float = 300.0,
        stop_timeout_s: float = 1.2,
        summary_every_s: float = 5.0,
        source_restarts: int = 5,
        restart_window_s: float = 60.0,
    ) -> None:
        if len(stages) < 2:
            raise ValueError("a pipeline needs a source and at least one more stage")
        self.stages = stages
        self.ring_handle = ring
        self.ring_slots = ring_slots
        self.log_level = log_level
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.summary_every_s = summary_every_s
        self.source_restarts = source_restarts
        self.restart_window_s = restart_window_s
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_event = self.ctx.Event()
        self.metrics = PipelineMetrics([s.name for s in stages])
        self._children: list[_Child] = []
        self._queues: list[Any] = []
        self._ring: FrameRing | None = None
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._source_info: dict[str, object] = {}
        self._restart_times: list[float] = []
        self.restarts = 0
        self._restart_state: Any = None
        if hasattr(stages[0], "restart_state"):
            # Set before the first spawn, so every process of the source gets it.
            self._restart_state = self.ctx.RawArray("d", RESTART_STATE_SIZE)
            stages[0].restart_state = self._restart_state

    @staticmethod
    def new_ring_handle() -> FrameRingHandle:
        """A fresh ring name and its lock (from the spawn context) to build the stages with."""
        name = f"{RING_PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"
        return FrameRingHandle(name, multiprocessing.get_context("spawn").Lock())

    # -- public -------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run to the end; never leaves a process or a shared-memory segment behind."""
        self._install_signal_handlers()
        try:
            self._start_processes()
            failure = self._wait_until_ready()
            if failure is not None:
                return failure
            source_info = dict(self._children[0].ready_info)
            self._source_info = source_info
            self._create_ring(source_info)
            for child in reversed(self._children):  # consumers first, the source last
                child.control.send(Start(source_info))
            self.metrics.start()
            log.info("pipeline running: %s", " -> ".join(s.name for s in self.stages))
            reason, code = self._watch()
            self._shutdown()
            dropped = self._ring.dropped if self._ring is not None else 0
            summary = self.metrics.summary(dropped=dropped, stop_reason=reason)
            if self._restart_state is not None:
                summary["capture_restarts"] = self.restarts
            return RunResult(reason, code, summary, source_info=source_info)
        finally:
            self._shutdown()
            self._release_ring()
            self._restore_signal_handlers()

    def live_view(self) -> dict[str, Any]:
        """For observers in other threads of this process (e.g. /metrics); never blocks. `dropped` (None
        once the ring is gone: `metrics.dropped` then holds the final count), queue depths, and the Ready
        info of each ready stage."""
        queues: dict[str, int] = {}
        for i, q in enumerate(list(self._queues)):
            with contextlib.suppress(Exception):  # closed at shutdown; qsize is unsupported on macOS
                queues[f"{self.stages[i].name}->{self.stages[i + 1].name}"] = q.qsize()
        dropped = None
        with contextlib.suppress(Exception):  # the ring may be closing under us
            dropped = self._ring.dropped if self._ring is not None else None
        ready = {c.stage.name: dict(c.ready_info) for c in list(self._children) if c.ready}
        return {"dropped": dropped, "queues": queues, "ready": ready}

    # -- start --------------------------------------------------------------------------------------------

    def _start_processes(self) -> None:
        n = len(self.stages)
        for i in range(n - 1):
            # The source->detect queue may hold refs to frames a live source has since overwritten.
            size = 2 * self.ring_slots + 2 if i == 0 else self.ring_slots + 2
            self._queues.append(self.ctx.Queue(maxsize=size))
        # Children inherit an ignored SIGINT through exec, so a Ctrl-C during their start-up cannot raise
        # KeyboardInterrupt in them; the parent's own handler is put back right after.
        try:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: no signal handling to arrange
            previous = None
        try:
            for i in range(n):
                self._children.append(self._spawn(i))
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _spawn(self, i: int) -> _Child:
        """Start stage i's process on its queues, with a new control pipe."""
        stage = self.stages[i]
        n = len(self.stages)
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        channels = StageChannels(
            inbox=self._queues[i - 1] if i > 0 else None,
            outbox=self._queues[i] if i < n - 1 else None,
            control=child_end,
            stop=self.stop_event,
        )
        # Each stage sizes its own model threads; numpy's BLAS (and OpenMP) pools would otherwise spin on
        # every core for the tracker's tiny matrices (measured: recognize at 690% CPU on a 16-core host).
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
        process = self.ctx.Process(
            target=stage_process_main,
            args=(stage, channels, self.log_level),
            name=stage.name,
            daemon=True,
        )
        process.start()
        child_end.close()  # only the child holds it now: its death reads as EOF here
        log.debug("started stage %s (pid %d)", stage.name, process.pid)
        return _Child(stage, process, parent_end, started=time.monotonic())

    def _wait_until_ready(self) -> RunResult | None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not all(c.ready for c in self._children):
            if self._signal is not None:
                result = self._abort_startup(self._signal_reason(), self._signal_exit_code())
                result.summary = self.metrics.summary(dropped=0, stop_reason=result.stop_reason)
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                slow = ", ".join(c.stage.name for c in self._children if not c.ready)
                return self._abort_startup(f"stage {slow} not ready after {self.startup_timeout_s:.0f} s", 1)
            for child, msg in self._poll(min(remaining, 0.1)):
                if isinstance(msg, Ready):
                    child.ready = True
                    child.ready_info = dict(msg.info)
                    log.debug("stage %s ready: %s", child.stage.name, msg.info)
                elif isinstance(msg, Failed):
                    msg = self._first_setup_failure(child, msg)
                    code = EXIT_USER_ERROR if msg.user_error else EXIT_FAILED
                    result = self._abort_startup(f"{msg.stage}: {msg.message}", code)
                    result.error = f"{msg.stage}: {msg.message}"
                    return result
            for child in self._children:
                if not child.ready and not child.process.is_alive():
                    exit_text = describe_exit(child.process.exitcode)
                    reason = f"stage {child.stage.name} exited during setup ({exit_text})"
                    result = self._abort_startup(reason, EXIT_FAILED)
                    result.error = reason
                    return result
        return None

    def _first_setup_failure(self, failed: _Child, failure: Failed) -> Failed:
        """The setup failure of the stage nearest the source, `failure` unless an earlier stage fails too.

        Stages set up in parallel, so two bad settings (say a TensorRT engine for the detector and a
        backend the embedder cannot use) fail in an order that is down to timing. The user gets the one a
        fix should start with, every time: the stages before `failed` get `SETUP_FAILURE_SETTLE_S` to
        report too.
        """
        earlier = {id(c): c for c in self._children[: self._children.index(failed)] if not c.ready}
        deadline = time.monotonic() + SETUP_FAILURE_SETTLE_S
        first, first_at = failure, self._children.index(failed)
        while earlier and time.monotonic() < deadline:
            news = self._poll(min(0.05, max(0.0, deadline - time.monotonic())))
            dead = [c for c in earlier.values() if not c.process.is_alive()]
            for child in dead:
                news += self._drain(child)
            for child, msg in news:
                if id(child) in earlier and isinstance(msg, Ready | Failed):
                    earlier.pop(id(child))
                    if isinstance(msg, Failed) and self._children.index(child) < first_at:
                        first, first_at = msg, self._children.index(child)
            for child in dead:
                earlier.pop(id(child), None)  # died without a word: the failures reported stand
        return first

    def _abort_startup(self, reason: str, code: int) -> RunResult:
        # Stages still loading models do not look at the stop event, and a failed one may still be exiting:
        # neither is worth a warning under the one-line error.
        self._shutdown(grace_s=0.3, quiet=True)
        return RunResult(reason, code)

    def _create_ring(self, source_info: dict[str, object]) -> None:
        h, w, c = (int(v) for v in source_info["frame_shape"])  # type: ignore[union-attr]
        handle = self.ring_handle
        try:
            self._ring = FrameRing.create(handle.name, self.ring_slots, (h, w, c), handle.lock)
        except OSError as exc:
            size_mb = self.ring_slots * h * w * c / 1e6
            raise UserError(
                f"cannot create the {size_mb:.0f} MB shared frame ring in /dev/shm ({exc.strerror or exc}); "
                "free space there or lower RING_SLOTS"
            ) from None
        log.debug("frame ring %s: %d slots of %dx%dx%d", handle.name, self.ring_slots, h, w, c)

    # -- run ----------------------------------------------------------------------------------------------

    def _watch(self) -> tuple[str, int]:
        next_summary = time.monotonic() + self.summary_every_s
        source_failure: Failed | None = None  # the source said why before dying: it may be restarted
        while True:
            if self._signal is not None:
                return self._signal_reason(), self._signal_exit_code()
            for child, msg in self._poll(0.1):
                if isinstance(msg, FrameDone):
                    self._count(msg.meta)
                elif isinstance(msg, Finished):
                    return msg.reason, EXIT_OK
                elif isinstance(msg, Failed):
                    if child is self._children[0] and self._restartable(msg):
                        source_failure = msg
                        continue
                    return f"stage {msg.stage} failed: {msg.message}", EXIT_FAILED
                elif isinstance(msg, Ready) and child is self._children[0] and not child.ready:
                    child.ready = True
                    child.control.send(Start(self._source_info))
                    log.warning("stage %s is running again, %.1f s after its restart",
                                child.stage.name, time.monotonic() - child.started)  # fmt: skip
            source = self._children[0]
            if not source.ready and time.monotonic() - source.started > SOURCE_READY_TIMEOUT_S:
                return (
                    f"stage {source.stage.name} not ready {SOURCE_READY_TIMEOUT_S:.0f} s after its restart",
                    EXIT_FAILED,
                )
            for child in self._children:
                if not child.process.is_alive() and child.process.exitcode != 0:
                    # Read what it said before dying: a Failed message explains more than the exit code.
                    failure = source_failure if child is source else None
                    for _, msg in self._drain(child):
                        if isinstance(msg, Failed):
                            failure = msg
                    exit_text = describe_exit(child.process.exitcode)
                    if failure is not None:
                        reason = f"stage {failure.stage} failed: {failure.message}"
                    else:
                        reason = f"stage {child.stage.name} died unexpectedly ({exit_text})"
                    if child is source and self._restartable(failure):
                        refusal = self._restart_source(reason)
                        if refusal is None:
                            source_failure = None
                            break  # the children list changed
                        return f"{reason}; {refusal}", EXIT_FAILED
                    return reason, EXIT_FAILED
            now = time.monotonic()
            if now >= next_summary:
                summary_log.info(self.metrics.interval_line(self._ring.dropped if self._ring else 0, now))
                next_summary = now + self.summary_every_s

    def _count(self, meta: FrameMeta) -> None:
        if not meta.status:  # placeholders sent while a source reconnects are not frames of the source
            self.metrics.add(meta)

    # -- restarting the source ----------------------------------------------------------------------------

    def _restartable(self, failure: Failed | None) -> bool:
        """Whether the source's process may be replaced: a live source that died, or failed other than by
        bad input (None = died without a word, e.g. killed)."""
        if self._restart_state is None or not self._source_info.get("live"):
            return False
        return failure is None or not (failure.user_error or failure.during_setup)

    def _restart_source(self, reason: str) -> str | None:
        """Replace the dead source process; None when restarted, else why not (one clause)."""
        assert self._restart_state is not None
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < self.restart_window_s]
        if len(self._restart_times) >= self.source_restarts:
            count, window = len(self._restart_times), self.restart_window_s
            return f"not restarted again: {count} restarts in the last {window:.0f} s"
        dead = self._children[0]
        dead.control.close()
        with contextlib.suppress(ValueError):
            dead.process.close()
        self._take_back_from_dead_source()
        self._restart_times.append(now)
        self.restarts += 1
        self._restart_state[0] = self.restarts
        log.warning("%s; restarting it (restart %d, at most %d in %.0f s)", reason, self.restarts,
                    self.source_restarts, self.restart_window_s)  # fmt: skip
        try:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:
            previous = None
        try:
            self._children[0] = self._spawn(0)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return None

    def _take_back_from_dead_source(self) -> None:
        """Free what a killed source may have held: the ring lock, the queue's write lock, a slot being
        written. Each lock is only ever held for microseconds, so one that stays taken has a dead holder."""
        _release_if_stuck(self.ring_handle.lock)
        # multiprocessing.Queue has no public way to do this; its feeder thread holds `_wlock` while writing.
        _release_if_stuck(getattr(self._queues[0], "_wlock", None))
        if self._ring is not None:
            for slot, state in enumerate(self._ring.states()):
                if state == "writing":
                    self._ring.drop(slot)  # acquired, never published: back to free (counted as dropped)

    def _poll(self, timeout: float) -> list[tuple[_Child, Any]]:
        """Messages from every control pipe that has some, waiting up to `timeout` for the first."""
        by_conn = {c.control: c for c in self._children if not c.control.closed}
        sentinels = [c.process.sentinel for c in self._children if c.process.is_alive()]
        ready = wait([*by_conn, *sentinels], timeout)
        out: list[tuple[_Child, Any]] = []
        for item in ready:
            child = by_conn.get(item)  # type: ignore[call-overload]
            if child is not None:
                out.extend(self._drain(child))
        return out

    @staticmethod
    def _drain(child: _Child) -> list[tuple[_Child, Any]]:
        out = []
        try:
            while not child.control.closed and child.control.poll():
                out.append((child, child.control.recv()))
        except (EOFError, OSError):
            child.control.close()
        return out

    # -- signals ------------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            if self._signal is None:
                self._signal = signum

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. in some tests): no handlers
                self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers = {}

    def _signal_reason(self) -> str:
        return "interrupted (Ctrl-C)" if self._signal == signal.SIGINT else "terminated (SIGTERM)"

    def _signal_exit_code(self) -> int:
        return EXIT_INTERRUPTED if self._signal == signal.SIGINT else EXIT_TERMINATED

    # -- stop ---------------------------------------------------------------------------------------------

    def _shutdown(self, grace_s: float | None = None, quiet: bool = False) -> None:
        """Stop every stage: ask, wait up to the grace time (reading their pipes meanwhile), then kill."""
        if not self._children:
            return
        self.stop_event.set()
        deadline = time.monotonic() + (self.stop_timeout_s if grace_s is None else grace_s)
        while any(c.process.is_alive() for c in self._children):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # A stage blocked sending FrameDone would never see the stop: keep reading.
            for _, msg in self._poll(min(remaining, 0.05)):
                if isinstance(msg, FrameDone):
                    self._count(msg.meta)
        for child in self._children:
            if child.process.is_alive():
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "stage %s did not stop in time; terminating it", child.stage.name)
                child.process.terminate()
        for child in self._children:
            child.process.join(0.2)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1.0)
        for child in self._children:
            child.control.close()
            with contextlib.suppress(ValueError):
                child.process.close()
        for q in self._queues:
            q.cancel_join_thread()  # the parent never puts; nothing to flush
            q.close()
        self._children = []
        self._queues = []

    def _release_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring.unlink()
            self._ring = None


def _release_if_stuck(lock: Any) -> None:
    """Release `lock` when it stays taken: its holder is dead (a Lock may be released by any process)."""
    if lock is None:
        return
    if lock.acquire(timeout=_STUCK_LOCK_S):
        lock.release()
        return
    log.warning("a lock held by the dead stage was released")
    with contextlib.suppress(ValueError):
        lock.release()
