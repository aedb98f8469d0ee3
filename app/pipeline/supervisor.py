"""The supervisor: starts a graph's stage processes, runs the readiness handshake, watches, stops them all.

The run is a `PipelineGraph` (graph.py): named nodes, one process each, and the channels between them; N
cameras are N capture nodes (one stream and one shared-memory ring each) feeding shared nodes. A stream's
end of file ends that stream; the run ends when every stream has ended (or on the window closed, Ctrl-C, a
shared stage failing). With several cameras, one whose source fails at start is a warning (its tile shows
why) and the others run; when every camera fails, the run stops with the first one's error as with one.

Life of a run (all in the parent process, which never loads a model or opens the source):
1. Start one `spawn` process per stage, the source first, each with bounded queues to its neighbours and
   its own duplex control pipe. Every stage runs setup() (open the source, load models) in parallel, reports
   `Ready(info)`, or `Failed` with one line (e.g. a missing model file), which ends the run as a user error.
   When several stages fail, the one nearest the source is reported, whatever order they fail in.
2. With every stage ready, create each camera's frame ring from its frame shape and send `Start` (the
   running streams' SourceInfo, and why the others are not running) to every stage, the sources last.
3. Watch control pipes and process sentinels: `FrameDone` feeds the metrics (a summary line every few
   seconds); the run ends on the first of: end of stream reaching the sink, the window closed (`Finished`),
   a stage failing (`Failed`) or dying (its sentinel fires), Ctrl-C / SIGTERM to the parent.
4. Stop: set the shared stop event; stages leave their loops within `POLL_S` and close (writers flush); any
   process still alive after `stop_timeout_s` (`close_timeout_s` when every stream ended or the window was
   closed: the stages are draining their writers) is terminated, then killed. The ring is unlinked in a
   `finally`, so neither processes nor shared-memory segments outlive the run.

Stage deaths (seen within ~0.1 s: the watch loop waits on every process sentinel):
- The capture process of a live source (URL, webcam) is restarted on its own, at most `source_restarts`
  times in `restart_window_s` per camera (then the run stops, naming it); the other cameras never notice.
  Its ring and its queue to detection stay; what the dead process held is taken back first: the ring
  lock and the queue's write lock if it died holding them, and a slot it was writing. The new process
  continues sequence numbers and frame indices from the shared `restart_state` and starts a new segment
  (recognition resets its tracks). Until it is ready the other stages just wait for its frames.
- A file source is not restarted: the run stops cleanly, naming the stage, with every output complete up to
  the last frame written (the frames the recognize stage held for the name look-ahead, NAME_LOOKAHEAD at
  most per file, are not). Resuming a file exactly would need frame-accurate seeking, which FFmpeg does not
  promise for every file, and a capture that dies on a file mostly died on something in the file (a decoder
  crash) that a restart would meet again.
- Any other stage stops the run cleanly within ~2 s, naming it. Their state is expensive and not
  restartable mid-stream: a loaded model and its GPU context (detect), the tracker and identity votes
  (recognize), an open video writer (gui); a crash there is a bug to see, not to paper over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import secrets
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from app.errors import UserError
from app.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USER_ERROR
from app.pipeline.frame_ring import FrameRing, FrameRingHandle, slot_shape
from app.pipeline.graph import Node, PipelineGraph, Stream
from app.pipeline.messages import (
    Failed,
    Finished,
    FrameDone,
    FrameMeta,
    FramesDone,
    Ready,
    SourceInfo,
    Start,
    Started,
)
from app.pipeline.metrics import StreamMetrics
from app.pipeline.restart_state import RestartState
from app.pipeline.stage_runner import StageChannels, stage_process_main

log = logging.getLogger(__name__)
summary_log = logging.getLogger("app.pipeline.summary")  # the periodic line; the CLI shows it by default

RING_PREFIX = "facering"
SOURCE_READY_TIMEOUT_S = 60.0  # a restarted capture opens its source (bounded by its own timeouts) first
STARTED_WAIT_S = 30.0  # how long the sources wait for the consumers' start work (e.g. rings page-locked)
SETUP_FAILURE_SETTLE_S = 2.0  # how long earlier stages may take to report their own setup failure
# After every stream ended, how long stages may take to close before they are terminated: longer than any
# stage's own bounded drain (the unknown faces' writer gives up after 30 s): what they hold is the run's.
CLOSE_TIMEOUT_S = 40.0
DEATH_CHECK_S = 0.1  # how often the watch loop looks for dead processes when no sentinel said so
_STUCK_LOCK_S = 0.5  # ring and queue locks are held for microseconds: longer means a dead holder


@dataclass
class RunResult:
    """How a run ended. `summary` is None when the pipeline never started (setup failed or was cut short)."""

    stop_reason: str
    exit_code: int
    summary: dict[str, object] | None = None
    error: str | None = None  # one line for `error: ...` when the run could not start
    source_info: SourceInfo | None = None  # the first running camera's
    sources: dict[int, SourceInfo] = field(default_factory=dict)
    camera_errors: dict[str, str] = field(default_factory=dict)  # cameras that could not start, and why


@dataclass
class _Child:
    node: Node
    process: Any
    control: Connection
    ready: bool = False
    ready_info: dict[str, object] | SourceInfo = field(default_factory=dict)
    started: float = 0.0
    failure: Failed | None = None  # a source's last word before dying: it may be restarted

    @property
    def name(self) -> str:
        return self.node.name


@dataclass
class _Restarts:
    """One restartable source's restart budget and the shared state its next process resumes from."""

    state: RestartState
    times: list[float] = field(default_factory=list)
    count: int = 0


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
    """Runs a pipeline graph (or, given a list of stages, the one-camera line of them: the first a source)."""

    def __init__(
        self,
        stages: list[Any] | PipelineGraph,
        ring: FrameRingHandle | None = None,
        ring_slots: int = 8,
        *,
        log_level: str = "WARNING",
        startup_timeout_s: float = 300.0,
        stop_timeout_s: float = 1.2,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        summary_every_s: float = 5.0,
        source_restarts: int = 5,
        restart_window_s: float = 60.0,
        slow_call_ms: float = 0.0,
    ) -> None:
        if isinstance(stages, PipelineGraph):
            graph = stages
        else:
            if ring is None:
                raise ValueError("a list of stages needs its ring handle")
            graph = PipelineGraph.linear(stages, ring, ring_slots)
        self.graph = graph
        self.ring_slots = ring_slots
        self.log_level = log_level
        self.slow_call_s = max(0.0, float(slow_call_ms)) / 1000.0  # SLOW_CALL_MS, for every stage process
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.close_timeout_s = close_timeout_s
        self.summary_every_s = summary_every_s
        self.source_restarts = source_restarts
        self.restart_window_s = restart_window_s
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_event = self.ctx.Event()
        self.stage_names = graph.stage_names()
        self.metrics = StreamMetrics(self.stage_names, [s.camera for s in graph.streams])
        self._children: dict[str, _Child] = {}
        self._poller: Any = None  # select.poll over the control pipes and sentinels (`_build_poller`)
        self._poller_controls: dict[int, _Child] = {}
        self._poller_signature: tuple[int, ...] = ()
        self._ended_seen = True  # a process sentinel fired since the last look for dead processes
        self._queues: dict[tuple[str, str], Any] = {}
        self._rings: dict[int, FrameRing] = {}
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._sources: dict[int, SourceInfo] = {}  # running streams
        self._notes: dict[int, str] = {}  # streams that could not start: why
        self._early: list[tuple[_Child, Any]] = []  # messages read while the stages started, for _watch
        self._ended: dict[int, str] = {}  # streams whose end reached the sink: why they ended
        self._restarts: dict[str, _Restarts] = {}
        for node in graph.nodes:
            if node.caps.restartable:
                # Set before the first spawn, so every process of the source gets it.
                state = RestartState.shared(self.ctx)
                node.stage.restart_state = state
                self._restarts[node.name] = _Restarts(state)

    @property
    def restarts(self) -> int:
        return sum(r.count for r in self._restarts.values())

    @staticmethod
    def new_ring_handle() -> FrameRingHandle:
        """A fresh ring name and its lock (from the spawn context) to build the stages with."""
        name = f"{RING_PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"
        ctx = multiprocessing.get_context("spawn")
        return FrameRingHandle(name, ctx.Lock(), ctx.Semaphore(0))

    # -- public -------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run to the end; never leaves a process or a shared-memory segment behind."""
        self._install_signal_handlers()
        try:
            self._start_processes()
            failure = self._wait_until_ready()
            if failure is not None:
                return failure
            self._create_rings()
            start = Start(dict(self._sources), dict(self._notes))
            consumers = [c for c in self._children.values() if not c.node.caps.source and c.ready]
            for child in consumers:
                child.control.send(start)
            # The sources last, once the consumers' start work is done: on the H200 the detector's
            # page-locking of 16 rings took about a second, and 16 live cameras started with it dropped
            # ~300 frames (newest wins) before the first detection.
            self._early = self._wait_until_started([c for c in consumers if c.node.caps.starts])
            for child in self._children.values():
                if child.node.caps.source and child.ready:
                    child.control.send(start)
            self.metrics.start()
            log.info("pipeline running: %s", ", ".join(self._children))
            reason, code = self._watch()
            # Every stream ended (or the window closed): the stages are closing, writers draining (a video's
            # last frames, the unknown faces' store); cutting that short would lose what they hold.
            self._shutdown(grace_s=self.close_timeout_s if code == EXIT_OK and self._signal is None else None)
            summary = self.metrics.summary(self._dropped(), stop_reason=reason)
            if self._restarts:
                summary["capture_restarts"] = self.restarts
            first = self._sources[min(self._sources)]
            return RunResult(reason, code, summary, source_info=first, sources=dict(self._sources),
                             camera_errors=self._camera_errors())  # fmt: skip
        finally:
            self._shutdown()
            self._release_rings()
            self._restore_signal_handlers()

    def _camera_errors(self) -> dict[str, str]:
        return {self.graph.streams[i].camera: note for i, note in self._notes.items()}

    def _dropped(self) -> dict[int, int]:
        return {i: ring.dropped for i, ring in self._rings.items()}

    def live_view(self) -> dict[str, Any]:
        """For observers in other threads of this process (e.g. /metrics); never blocks. `dropped` (None
        once the rings are gone: `metrics.dropped` then holds the final count), queue depths, and the Ready
        info of each ready node (a capture's SourceInfo as a dict); `dropped_by_stream` per stream index."""
        queues: dict[str, int] = {}
        for (src, dst), q in list(self._queues.items()):
            with contextlib.suppress(Exception):  # closed at shutdown; qsize is unsupported on macOS
                queues[f"{src}->{dst}"] = q.qsize()
        dropped = None
        by_stream: dict[int, int] = {}
        with contextlib.suppress(Exception):  # the rings may be closing under us
            by_stream = {i: ring.dropped for i, ring in list(self._rings.items())}
            dropped = sum(by_stream.values()) if by_stream else None
        ready = {
            c.name: dataclasses.asdict(c.ready_info)
            if isinstance(c.ready_info, SourceInfo)
            else dict(c.ready_info)
            for c in list(self._children.values())
            if c.ready
        }
        return {"dropped": dropped, "dropped_by_stream": by_stream, "queues": queues, "ready": ready}

    # -- start --------------------------------------------------------------------------------------------

    def _start_processes(self) -> None:
        for ch in self.graph.channels:
            self._queues[(ch.src, ch.dst)] = self.ctx.Queue(maxsize=ch.maxsize)
        # Children inherit an ignored SIGINT through exec, so a Ctrl-C during their start-up cannot raise
        # KeyboardInterrupt in them; the parent's own handler is put back right after.
        with _sigint_ignored():
            for node in self.graph.nodes:
                self._children[node.name] = self._spawn(node)

    def _spawn(self, node: Node) -> _Child:
        """Start a node's process on its queues, with a new control pipe."""
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        inputs = [self._queues[(ch.src, ch.dst)] for ch in self.graph.inputs(node.name)]
        outputs = self.graph.outputs(node.name)
        outbox: Any = None
        if len(outputs) == 1:
            outbox = self._queues[(outputs[0].src, outputs[0].dst)]
        elif outputs:  # routed by stream
            outbox = {s: self._queues[(ch.src, ch.dst)] for ch in outputs for s in ch.streams or ()}
        channels = StageChannels(
            inbox=None if not inputs else inputs[0] if len(inputs) == 1 else inputs,
            outbox=outbox,
            control=child_end,
            stop=self.stop_event,
        )
        # Each stage sizes its own model threads; numpy's BLAS (and OpenMP) pools would otherwise spin on
        # every core for the tracker's tiny matrices (measured: recognize at 690% CPU on a 16-core host).
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
        process = self.ctx.Process(
            target=stage_process_main,
            args=(node.stage, channels, self.log_level, node.name, self.slow_call_s),
            name=node.name,
            daemon=True,
        )
        process.start()
        child_end.close()  # only the child holds it now: its death reads as EOF here
        log.debug("started %s (pid %d)", node.name, process.pid)
        return _Child(node, process, parent_end, started=time.monotonic())

    def _multi_camera(self) -> bool:
        return len(self.graph.streams) > 1

    def _wait_until_ready(self) -> RunResult | None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not all(c.ready or self._excluded(c) for c in self._children.values()):
            if self._signal is not None:
                result = self._abort_startup(self._signal_reason(), self._signal_exit_code())
                result.summary = self.metrics.summary({}, stop_reason=result.stop_reason)
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = [n for n, c in self._children.items() if not c.ready and not self._excluded(c)]
                slow = ", ".join(waiting)
                return self._abort_startup(f"stage {slow} not ready after {self.startup_timeout_s:.0f} s", 1)
            news = self._poll(min(remaining, 0.1))
            # A stage that sent its Failed and ended after that read: its pipe still holds why.
            dead = [c for c in self._children.values()
                    if not c.ready and not self._excluded(c) and not c.process.is_alive()]  # fmt: skip
            for child in dead:
                news += self._drain(child)
            for child, msg in news:
                if isinstance(msg, Ready):
                    child.ready = True
                    child.ready_info = msg.info
                    if isinstance(msg.info, SourceInfo) and child.node.stream is not None:
                        self._sources[child.node.stream] = msg.info
                    log.debug("%s ready: %s", child.name, msg.info)
                elif isinstance(msg, Failed):
                    if self._camera_may_fail(child):
                        self._camera_failed(child, f"{msg.stage}: {msg.message}", msg)
                        continue
                    return self._setup_failed(child, msg)
            for child in dead:
                if not child.ready and not self._excluded(child):  # it died without a word
                    exit_text = describe_exit(child.process.exitcode)
                    reason = f"stage {child.name} exited during setup ({exit_text})"
                    if self._camera_may_fail(child):
                        self._camera_failed(child, reason, None)
                        continue
                    result = self._abort_startup(reason, EXIT_FAILED)
                    result.error = reason
                    return result
            if self._multi_camera() and len(self._notes) == len(self.graph.streams):
                # Every camera failed: the first one's error, as with one camera.
                first = min(self._notes)
                failed = self._children[self.graph.streams[first].source].failure
                if failed is not None:
                    return self._setup_failed(self._children[self.graph.streams[first].source], failed)
                result = self._abort_startup(self._notes[first], EXIT_FAILED)
                result.error = self._notes[first]
                return result
        return None

    def _wait_until_started(self, starting: list[_Child]) -> list[tuple[_Child, Any]]:
        """Wait (at most STARTED_WAIT_S) for each of `starting` to report Started; what else came
        meanwhile (a failure, a death seen) stops the wait and is handed to the watch loop."""
        waiting = {c.name for c in starting}
        early: list[tuple[_Child, Any]] = []
        deadline = time.monotonic() + min(self.startup_timeout_s, STARTED_WAIT_S)
        while waiting and self._signal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("started without waiting longer for %s", ", ".join(sorted(waiting)))
                break
            for child, msg in self._poll(min(remaining, 0.1)):
                if isinstance(msg, Started):
                    waiting.discard(child.name)  # a lane's stage says "recognize", its node "recognize:2"
                else:
                    early.append((child, msg))
            gone = any(c.name in waiting and not c.process.is_alive() for c in starting)
            if gone or any(isinstance(msg, Failed) for _, msg in early):
                break
        return early

    def _excluded(self, child: _Child) -> bool:
        return child.node.stream is not None and child.node.stream in self._notes

    def _camera_may_fail(self, child: _Child) -> bool:
        """With several cameras, a camera that cannot start does not stop the others."""
        return self._multi_camera() and child.node.caps.source and child.node.stream is not None

    def _camera_failed(self, child: _Child, reason: str, failure: Failed | None) -> None:
        index = child.node.stream
        assert index is not None  # only a camera's source fails as a camera (`_camera_may_fail`)
        stream = self.graph.streams[index]
        child.failure = failure
        text = failure.message if failure is not None else reason
        self._notes[stream.index] = text
        if len(self._notes) < len(self.graph.streams):
            log.warning("camera %s did not start (%s); the other cameras run", stream.camera, text)

    def _setup_failed(self, child: _Child, msg: Failed) -> RunResult:
        msg = self._first_setup_failure(child, msg)
        code = EXIT_USER_ERROR if msg.user_error else EXIT_FAILED
        result = self._abort_startup(f"{msg.stage}: {msg.message}", code)
        result.error = f"{msg.stage}: {msg.message}"
        return result

    def _first_setup_failure(self, failed: _Child, failure: Failed) -> Failed:
        """The setup failure of the stage nearest the source, `failure` unless an earlier stage fails too.

        Stages set up in parallel, so two bad settings (say a TensorRT engine for the detector and a
        backend the embedder cannot use) fail in an order that is down to timing. The user gets the one a
        fix should start with, every time: the stages before `failed` get `SETUP_FAILURE_SETTLE_S` to
        report too. (With several cameras a camera's own failure does not count here.)
        """
        order = list(self._children.values())
        position = order.index(failed)
        earlier = {
            id(c): c for c in order[:position] if not c.ready and not self._excluded(c) and c is not failed
        }
        deadline = time.monotonic() + SETUP_FAILURE_SETTLE_S
        first, first_at = failure, position
        while earlier and time.monotonic() < deadline:
            news = self._poll(min(0.05, max(0.0, deadline - time.monotonic())))
            dead = [c for c in earlier.values() if not c.process.is_alive()]
            for child in dead:
                news += self._drain(child)
            for child, msg in news:
                if id(child) in earlier and isinstance(msg, Ready | Failed):
                    earlier.pop(id(child))
                    if isinstance(msg, Failed) and order.index(child) < first_at:
                        if self._camera_may_fail(child):
                            continue
                        first, first_at = msg, order.index(child)
            for child in dead:
                earlier.pop(id(child), None)  # died without a word: the failures reported stand
        return first

    def _abort_startup(self, reason: str, code: int) -> RunResult:
        # Stages still loading models do not look at the stop event, and a failed one may still be exiting:
        # neither is worth a warning under the one-line error.
        self._shutdown(grace_s=0.3, quiet=True)
        return RunResult(reason, code)

    def _create_rings(self) -> None:
        for index, info in sorted(self._sources.items()):
            stream = self.graph.streams[index]
            assert info.frame_shape is not None  # a first start always read a frame
            h, w, c = info.frame_shape
            handle = stream.ring
            slots = self.ring_slots + (0 if info.live else stream.held)
            try:
                self._rings[index] = FrameRing.create(
                    handle.name, slots, (h, w, c), handle.lock, handle.freed, info.pixel_format
                )
            except OSError as exc:
                size_mb = slots * math.prod(slot_shape(info.pixel_format, (h, w, c))) / 1e6
                raise UserError(
                    f"cannot create the {size_mb:.0f} MB shared frame ring of camera {stream.camera} in "
                    f"/dev/shm ({exc.strerror or exc}); free space there or lower RING_SLOTS (a file: or "
                    "NAME_LOOKAHEAD)"
                ) from None
            log.debug("frame ring %s: %d slots of %dx%d %s", handle.name, slots, w, h,
                      info.pixel_format)  # fmt: skip

    # -- run ----------------------------------------------------------------------------------------------

    def _watch(self) -> tuple[str, int]:
        next_summary = time.monotonic() + self.summary_every_s
        next_death_check = 0.0
        while True:
            if self._signal is not None:
                return self._signal_reason(), self._signal_exit_code()
            news, self._early = self._early + self._poll(0.1), []
            for child, msg in news:
                if isinstance(msg, FrameDone):
                    self._count(msg.meta)
                elif isinstance(msg, Finished):
                    if msg.stream is None:
                        return msg.reason, EXIT_OK
                    self._ended[msg.stream] = msg.reason
                    if len(self._sources) > 1:
                        log.info("camera %s: %s", self.graph.streams[msg.stream].camera, msg.reason)
                    if set(self._sources) <= set(self._ended):
                        return self._end_reason(), EXIT_OK
                elif isinstance(msg, Failed):
                    if child.node.caps.source and self._restartable(child, msg):
                        child.failure = msg
                        continue
                    return f"stage {msg.stage} failed: {msg.message}", EXIT_FAILED
                elif isinstance(msg, Ready) and child.node.caps.source and not child.ready:
                    child.ready = True
                    child.control.send(Start(dict(self._sources), dict(self._notes)))
                    log.warning("stage %s is running again, %.1f s after its restart",
                                child.name, time.monotonic() - child.started)  # fmt: skip
            for child in self._children.values():
                if self._excluded(child):
                    continue
                if (
                    child.node.caps.source
                    and not child.ready
                    and time.monotonic() - child.started > SOURCE_READY_TIMEOUT_S
                ):
                    return f"stage {child.name} not ready {SOURCE_READY_TIMEOUT_S:.0f} s after its restart", 1
            now = time.monotonic()
            # A death fires its process's sentinel in `_poll`; the timed look is a fallback only. Looking
            # every round (a waitpid per process) cost more than the rest of a round of frame reports.
            if self._ended_seen or now >= next_death_check:
                self._ended_seen = False
                next_death_check = now + DEATH_CHECK_S
                outcome = self._check_deaths()
                if outcome is not None:
                    return outcome
            if now >= next_summary:
                summary_log.info(self.metrics.interval_line(self._dropped(), now))
                next_summary = now + self.summary_every_s

    def _end_reason(self) -> str:
        reasons = set(self._ended.values())
        if len(self._sources) == 1 or len(reasons) == 1:
            return next(iter(reasons))
        return "every camera ended"

    def _check_deaths(self) -> tuple[str, int] | None:
        for child in list(self._children.values()):
            if self._excluded(child) or child.process.is_alive() or child.process.exitcode == 0:
                continue
            # Read what it said before dying: a Failed message explains more than the exit code.
            failure = child.failure
            for _, msg in self._drain(child):
                if isinstance(msg, Failed):
                    failure = msg
            exit_text = describe_exit(child.process.exitcode)
            if failure is not None:
                reason = f"stage {failure.stage} failed: {failure.message}"
                if self._multi_camera() and child.node.caps.source:
                    reason = f"{child.name} failed: {failure.message}"
            else:
                reason = f"stage {child.name} died unexpectedly ({exit_text})"
            if child.node.caps.source and self._restartable(child, failure):
                refusal = self._restart_source(child, reason)
                if refusal is None:
                    return None  # the children changed: look again on the next round
                return f"{reason}; {refusal}", EXIT_FAILED
            return reason, EXIT_FAILED
        return None

    def _count(self, meta: FrameMeta) -> None:
        if not meta.status:  # placeholders sent while a source reconnects are not frames of the source
            self.metrics.add(meta)

    # -- restarting a source ------------------------------------------------------------------------------

    def _restartable(self, child: _Child, failure: Failed | None) -> bool:
        """Whether a source's process may be replaced: a live source that died, or failed other than by
        bad input (None = died without a word, e.g. killed)."""
        info = self._sources.get(child.node.stream) if child.node.stream is not None else None
        if child.name not in self._restarts or info is None or not info.live:
            return False
        return failure is None or not (failure.user_error or failure.during_setup)

    def _restart_source(self, dead: _Child, reason: str) -> str | None:
        """Replace a dead source process; None when restarted, else why not (one clause)."""
        budget = self._restarts[dead.name]
        now = time.monotonic()
        budget.times = [t for t in budget.times if now - t < self.restart_window_s]
        if len(budget.times) >= self.source_restarts:
            count, window = len(budget.times), self.restart_window_s
            return f"not restarted again: {count} restarts in the last {window:.0f} s"
        dead.control.close()
        with contextlib.suppress(ValueError):
            dead.process.close()
        self._take_back_from_dead_source(dead.node)
        budget.times.append(now)
        budget.count += 1
        budget.state.restarts = budget.count
        log.warning("%s; restarting it (restart %d, at most %d in %.0f s)", reason, budget.count,
                    self.source_restarts, self.restart_window_s)  # fmt: skip
        with _sigint_ignored():
            self._children[dead.name] = self._spawn(dead.node)
        return None

    def _take_back_from_dead_source(self, node: Node) -> None:
        """Free what a killed source may have held: its ring's lock, its queue's write lock, a slot being
        written. Each lock is only ever held for microseconds, so one that stays taken has a dead holder."""
        stream: Stream | None = self.graph.stream_of(node)
        assert stream is not None
        _release_if_stuck(stream.ring.lock)
        output = self.graph.output(node.name)
        if output is not None:
            # multiprocessing.Queue has no public way to do this; its feeder thread holds `_wlock` writing.
            _release_if_stuck(getattr(self._queues[(output.src, output.dst)], "_wlock", None))
        ring = self._rings.get(stream.index)
        if ring is not None:
            for slot, state in enumerate(ring.states()):
                if state == "writing":
                    ring.drop(slot)  # acquired, never published: back to free (counted as dropped)

    def _poll(self, timeout: float) -> list[tuple[_Child, Any]]:
        """Messages from every control pipe that has some, waiting up to `timeout` for the first (or for a
        process to end: `_ended_seen` is then set)."""
        if not hasattr(select, "poll"):
            return self._poll_with_wait(timeout)
        signature = tuple(map(id, self._children.values()))
        if self._poller is None or signature != self._poller_signature:
            self._build_poller(signature)
        assert self._poller is not None
        out: list[tuple[_Child, Any]] = []
        for fd, _ in self._poller.poll(math.ceil(max(0.0, timeout) * 1e3)):
            child = self._poller_controls.get(fd)
            if child is None:  # a process sentinel: that process ended; look again without it
                self._ended_seen = True
                self._poller = None
                continue
            out.extend(self._drain(child))
            if child.control.closed:
                self._poller = None  # a closed pipe's number may be reused: register afresh
        return out

    def _build_poller(self, signature: tuple[int, ...]) -> None:
        """One `select.poll` over every open control pipe and every live process's sentinel, kept until the
        children change: `multiprocessing.connection.wait` builds a selector and registers every one of them
        on each call, and the watch loop runs for every frame report (0.3 ms of the parent's CPU a call on
        the 2-core box, with 9 processes)."""
        poller = select.poll()
        controls: dict[int, _Child] = {}
        for child in self._children.values():
            if not child.control.closed:
                fd = child.control.fileno()
                controls[fd] = child
                poller.register(fd, select.POLLIN)
            if child.process.is_alive():
                poller.register(child.process.sentinel, select.POLLIN)
        self._poller, self._poller_controls, self._poller_signature = poller, controls, signature

    def _poll_with_wait(self, timeout: float) -> list[tuple[_Child, Any]]:
        children = list(self._children.values())
        by_conn = {c.control: c for c in children if not c.control.closed}
        sentinels = [c.process.sentinel for c in children if c.process.is_alive()]
        ready = wait([*by_conn, *sentinels], timeout)
        out: list[tuple[_Child, Any]] = []
        for item in ready:
            child = by_conn.get(item) if isinstance(item, Connection) else None  # else a sentinel
            if child is not None:
                out.extend(self._drain(child))
            else:
                self._ended_seen = True
        return out

    @staticmethod
    def _drain(child: _Child) -> list[tuple[_Child, Any]]:
        out: list[tuple[_Child, Any]] = []
        try:
            while not child.control.closed and child.control.poll():
                msg = child.control.recv()
                if isinstance(msg, FramesDone):  # the sink's frames of one batch, reported at once
                    out.extend((child, FrameDone(meta)) for meta in msg.metas)
                else:
                    out.append((child, msg))
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
        children = list(self._children.values())
        self.stop_event.set()
        deadline = time.monotonic() + (self.stop_timeout_s if grace_s is None else grace_s)
        hurried = self._signal is not None
        while any(c.process.is_alive() for c in children):
            if not hurried and self._signal is not None:
                hurried = True  # Ctrl-C while stages drain at the end: the usual short stop from now on
                deadline = min(deadline, time.monotonic() + self.stop_timeout_s)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # A stage blocked sending FrameDone would never see the stop: keep reading.
            for _, msg in self._poll(min(remaining, 0.05)):
                if isinstance(msg, FrameDone):
                    self._count(msg.meta)
        for child in children:
            # What a stage reported just before it ended, after the last read (the sink's last frames).
            for _, msg in self._drain(child):
                if isinstance(msg, FrameDone):
                    self._count(msg.meta)
        for child in children:
            if child.process.is_alive():
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "stage %s did not stop in time; terminating it", child.name)
                child.process.terminate()
        for child in children:
            child.process.join(0.2)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1.0)
        for child in children:
            child.control.close()
            with contextlib.suppress(ValueError):
                child.process.close()
        for q in [*self._queues.values(), *self.graph.side_queues]:
            q.cancel_join_thread()  # the parent never puts; nothing to flush
            q.close()
        self._children = {}
        self._queues = {}
        self.graph.side_queues = []

    def _release_rings(self) -> None:
        for ring in self._rings.values():
            ring.close()
            ring.unlink()
        self._rings = {}


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Spawned children inherit an ignored SIGINT (a Ctrl-C during their start cannot hit them half-made)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signal handling to arrange
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


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
