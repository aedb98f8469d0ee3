"""The one process wrapper every stage runs in: setup handshake, queue loop, batching, timing, shutdown.

A stage is a plain class (so it unit-tests without processes), and declares what it can do in one typed
`capabilities` attribute (`Capabilities`; a class without one is a plain consumer):

    class Stage:
        name: str
        capabilities = Capabilities(batched=True, starts=True)
        max_batch: int = 4                  # batched: process_batch() gets up to this many messages
        def setup(self) -> dict | SourceInfo: ...  # load models / open the source; goes to the supervisor
        def start(self, sources) -> None: ...      # starts: every stage is ready (stream -> SourceInfo)
        def process(self, msg) -> list: ...        # zero or more messages for the next stage
        def process_batch(self, msgs) -> list: ... # batched only
        def end_stream(self, stream) -> list: ...  # drains only: what it held of the stream that ended
        def close(self) -> None: ...

After setup() the stage reports `Ready(info)` and waits for the supervisor's `Start` (sent once every stage
is ready and the frame rings exist).

A source stage (`Capabilities(source=True)`, capture) has `produce()` instead of `process()`: it returns the
next message, None at the end of the stream, or `NOTHING_YET` when it has nothing to send right now (e.g.
waiting for a free ring slot), so the runner can check for a stop in between. A live source (its setup()
returned a `SourceInfo` with `live`) is not blocked by a full queue: the runner calls its `discard(msg)`.

A service stage (`Capabilities(service=True)`, the shared embedding worker) has neither frames in nor out:
the runner calls `serve(timeout)` until the run stops; it answers requests on queues its stage object holds.

A stage may serve several streams (Start.sources): its input ends when an `EndOfStream` came from every
one of them; each one is passed on (or, by the last stage, reported as `Finished(stream=...)`) as it comes,
so one camera's end of file ends that stream only. Inputs may be several queues (one per producer), read in
turn (`channels.FairInbox`).

A stage may raise `StopPipeline(reason)` (e.g. the GUI window was closed) to end the whole run in order.
Messages keep their `meta` object from stage to stage; the runner appends this stage's `StageStamp` to each
input's meta, and the last stage (no outbox) reports every finished frame to the supervisor as `FrameDone`.

Outputs produced together travel together: what one process_batch() call returns, and what a stage produced
from frames that were already waiting for it, goes to each next queue as one `FrameBatch` (the sink's
reports as one `FramesDone`), and the next runner unpacks it. A frame's output waits for the frames
processed after it about `PACK_WINDOW_S` at most: the next input is taken along only when it is already
there and would be done within the window if it took as long as the last one (an idle pipeline passes each
frame on at once, a detector call of 10-50 ms never waits for another). Every queue operation costs the two
processes a pipe write or read, a lock, the feeder thread's hand-off and often a wake-up; a frame at a time
that was 0.3-0.4 ms of CPU a frame in each of postprocess, recognize and the sink (2-core box, 4 cameras at
1080p), most of the sink's CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from app.errors import UserError, one_line
from app.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR
from app.pipeline.channels import FairInbox
from app.pipeline.cpu_meter import ModelCpu, StageCpu
from app.pipeline.messages import (
    EndOfStream,
    Failed,
    Finished,
    FrameBatch,
    FrameDone,
    FrameMeta,
    FramesDone,
    Ready,
    SourceInfo,
    StageStamp,
    Start,
    Started,
)
from app.pipeline.slow_calls import SlowCallWatch

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a waiting stage looks at the stop flag
# How long a finished frame's output may wait for the frames processed after it before it is sent (only while
# more input is queued, and only for work expected to end within it): a recognition lane at ~1.5 ms a frame
# then sends 2 frames a put, postprocess at ~0.3 ms up to ~10.
PACK_WINDOW_S = 0.003
PACK_MAX = 64  # messages in one FrameBatch at most


class _NothingYet:
    def __repr__(self) -> str:
        return "NOTHING_YET"


NOTHING_YET: Any = _NothingYet()


class StopPipeline(Exception):
    """Raised by a stage to end the run in order; `str(exc)` is the reason shown to the user."""


@dataclass(frozen=True)
class Capabilities:
    """What a stage can do, declared by its class (`capabilities = Capabilities(...)`), read by the runner
    and the supervisor; never discovered from which methods happen to exist."""

    source: bool = False  # produce() instead of process(): the head of a stream
    batched: bool = False  # process_batch(msgs) with up to `max_batch` messages (read after setup and start)
    starts: bool = False  # start(sources) once every stage is ready
    restartable: bool = False  # a source whose dead process may be replaced (live sources only)
    service: bool = False  # no frames in or out: serve(timeout) answers requests on its own side channels
    notes: bool = False  # note(stream, text) for each camera that could not start (its tile says why)
    drains: bool = False  # end_stream(stream) -> list: outputs it still holds, sent before the stream ends


PLAIN = Capabilities()


def capabilities_of(stage: Any) -> Capabilities:
    """The stage's declared capabilities; a class that declares none is a plain consumer."""
    caps = getattr(type(stage), "capabilities", PLAIN)
    if not isinstance(caps, Capabilities):
        raise TypeError(f"{type(stage).__name__}.capabilities must be a Capabilities")
    return caps


class Stage(Protocol):
    name: str
    capabilities: ClassVar[Capabilities]

    def setup(self) -> dict[str, object] | SourceInfo: ...

    def process(self, msg: Any) -> list[Any]: ...

    def close(self) -> None: ...


class SourceStage(Protocol):
    name: str
    capabilities: ClassVar[Capabilities]
    frames_read: int  # frames taken from the source so far (the end-of-stream message says how many)
    end_reason: str  # why produce() returned None

    def setup(self) -> SourceInfo: ...

    def produce(self) -> Any: ...

    def discard(self, msg: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class StageChannels:
    """A stage's connections: bounded queues in and out, its control pipe, and the run-wide stop event."""

    inbox: Any  # multiprocessing Queue (or queue.Queue in tests), or a list of them; None for the source
    outbox: Any  # None for the last stage; a dict stream -> queue when streams go to different nodes
    control: Any  # this stage's end of a duplex Pipe: sends Ready/FrameDone/Finished/Failed, receives Start
    stop: Any  # Event: the supervisor wants every stage to stop now


def stamp_now() -> float:
    return time.monotonic()


def _packed(msgs: list[Any]) -> Any:
    """One queue item for `msgs`: the message itself, or a FrameBatch of several."""
    return msgs[0] if len(msgs) == 1 else FrameBatch(msgs)


def unpacked(msg: Any) -> list[Any]:
    """The messages a queue item carries: a FrameBatch's, in order, or the item itself."""
    return list(msg.messages) if isinstance(msg, FrameBatch) else [msg]


class StageRunner:
    """Runs one stage against its channels until end of stream, a stop request or an error."""

    def __init__(
        self,
        stage: Any,
        channels: StageChannels,
        poll_s: float = POLL_S,
        node: str | None = None,
        cpu_clock: Callable[[], float] = time.process_time,
        pack_window_s: float = PACK_WINDOW_S,
        slow_call_s: float = 0.0,
    ) -> None:
        self.stage = stage
        self.slow_call_s = slow_call_s  # > 0: log where a process() call is past this long (SLOW_CALL_MS)
        self.pack_window_s = pack_window_s
        self.cpu_clock = cpu_clock  # the process's CPU clock, for the loop's CPU line
        self.node = node or stage.name  # several capture nodes run one stage class: the process's name
        self.items = 0  # messages produced (a source) or taken in (a consumer) by the loop
        self.channels = channels
        self.poll_s = poll_s
        self.caps = capabilities_of(stage)
        self.is_source = self.caps.source
        self.max_batch = 1
        self.live = False
        self.stream = 0  # a source's stream
        self._pending_eos: list[EndOfStream] = []
        self._backlog: deque[Any] = deque()  # the rest of a FrameBatch taken from the inbox
        self._open_streams: set[int] = {0}
        self.setting_up = True  # until setup() returns, a SIGTERM ends the process at once (on_sigterm)
        inbox = channels.inbox
        self._inbox = None if inbox is None else FairInbox(inbox if isinstance(inbox, list) else [inbox])

    # -- entry --------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Setup, handshake, loop, close. Returns the process exit code (0 = orderly)."""
        name = self.stage.name
        try:
            info = self.stage.setup() or {}
        except Exception as exc:  # noqa: BLE001 - any setup failure is reported, then the process ends
            log.debug("%s: setup failed", name, exc_info=True)
            self._report_failure(exc, during_setup=True)
            self._close_stage()
            return EXIT_USER_ERROR if isinstance(exc, UserError) else EXIT_FAILED
        finally:
            self.setting_up = False
        if self.caps.batched:
            self.max_batch = max(1, int(self.stage.max_batch))  # setup() may have lowered it
        if isinstance(info, SourceInfo):
            self.live, self.stream = info.live, info.stream
        else:
            info = dict(info)
        if not self._send(Ready(name, info)):
            self._close_stage()
            return EXIT_FAILED
        code = EXIT_OK
        orderly = False
        start: Start | None = None
        loop_cpu = 0.0
        try:
            start = self._wait_for_start()
            loop_cpu = self._start_cpu()
            if start is not None:
                self._open_streams = start.streams
                if self.caps.starts:
                    self.stage.start(dict(start.sources))
                    self._send(Started(name))
                    if self.caps.batched:  # start() may set it from the sources (e.g. all live)
                        self.max_batch = max(1, int(self.stage.max_batch))
                if self.caps.notes:
                    for stream, text in start.notes.items():
                        self.stage.note(stream, text)
                if self.caps.service:
                    orderly = self._run_service()
                else:
                    orderly = self._run_source() if self.is_source else self._run_consumer()
        except StopPipeline as exc:
            self._send(Finished(name, str(exc) or "stopped"))
        except Exception as exc:  # noqa: BLE001
            log.debug("%s: failed", name, exc_info=True)
            self._report_failure(exc, during_setup=False)
            code = EXIT_FAILED
        finally:
            if start is not None:
                self._log_cpu(loop_cpu)
            self._close_stage()
            if not orderly:
                # Nobody may read what is still buffered for the next stage: do not wait for it at exit.
                for outbox in self._outboxes():
                    if hasattr(outbox, "cancel_join_thread"):
                        outbox.cancel_join_thread()
        return code

    def on_sigterm(self, signum: int, frame: object) -> None:
        """SIGTERM: unwind through close() so writers are flushed, or, while setup() runs, end at once."""
        if self.setting_up:
            # setup() runs native code that calls back into Python (C extensions initialising on import,
            # model loaders): an exception raised there aborts the process with a C++ trace on stderr, under
            # the run's one error line. Nothing is written yet, so there is nothing to unwind.
            _end_now(128 + signum)
        raise SystemExit(128 + signum)

    def _start_cpu(self) -> float:
        """The process's CPU clock at the start signal; the model's meter forgets its warm-up calls."""
        meter = self._model_cpu()
        if meter is not None:
            meter.reset()
        return self.cpu_clock()

    def _model_cpu(self) -> ModelCpu | None:
        """The stage's model meter: a stage with a model keeps one as `model_cpu`."""
        meter = getattr(self.stage, "model_cpu", None)
        return meter if isinstance(meter, ModelCpu) else None

    def _log_cpu(self, loop_start: float) -> None:
        meter = self._model_cpu()
        model_s = meter.seconds if meter is not None else 0.0
        log.info(StageCpu(self.node, self.cpu_clock() - loop_start, model_s, self.items).line())

    def _report_failure(self, exc: Exception, *, during_setup: bool) -> None:
        message = one_line(exc, limit=None, typed=True)
        self._send(Failed(self.stage.name, message, during_setup, user_error=isinstance(exc, UserError)))

    # -- loops --------------------------------------------------------------------------------------------

    def _wait_for_start(self) -> Start | None:
        """Block until the supervisor's Start; None on a stop request or when the supervisor is gone."""
        ch = self.channels
        while not ch.stop.is_set():
            try:
                if not ch.control.poll(self.poll_s):
                    continue
                msg = ch.control.recv()
            except (EOFError, OSError):
                return None
            if isinstance(msg, Start):
                return msg
        return None

    def _run_source(self) -> bool:
        """Produce until the end of the stream (True) or a stop request (False)."""
        ch = self.channels
        while not ch.stop.is_set():
            msg = self.stage.produce()
            if msg is NOTHING_YET:
                continue
            if msg is not None:
                self.items += 1
            if msg is None:
                eos = EndOfStream(self.stage.end_reason, int(self.stage.frames_read), self.stream)
                return self._put(eos)
            if self.live:
                try:
                    self._outbox_for(msg).put_nowait(msg)
                except queue.Full:
                    self.stage.discard(msg)
            elif not self._put(msg):
                return False
        return False

    def _run_service(self) -> bool:
        """Serve until the stop request: a service has no stream of its own to end."""
        while not self.channels.stop.is_set():
            self.stage.serve(self.poll_s)
        return True

    def _run_consumer(self) -> bool:
        """Process until end of stream (True) or a stop request (False), watched with SLOW_CALL_MS."""
        watch = SlowCallWatch(self.node, self.slow_call_s) if self.slow_call_s > 0 else None
        if watch is None:
            return self._consume(None)
        watch.start()
        try:
            return self._consume(watch)
        finally:
            watch.stop()

    def _consume(self, watch: SlowCallWatch | None) -> bool:
        ch = self.channels
        name = self.stage.name
        held: list[Any] = []  # outputs not sent yet (sent together, see PACK_WINDOW_S)
        done: list[FrameMeta] = []  # the sink's frames not reported yet
        held_since = 0.0
        while True:
            batch = self._next_batch()
            if batch is None:
                return False
            if batch:
                self.items += len(batch)
                start = stamp_now()
                batched = self.caps.batched and self.max_batch > 1
                if watch is not None:
                    watch.begin("process_batch" if batched else "process")
                outputs = self.stage.process_batch(batch) if batched else self.stage.process(batch[0])
                if watch is not None:
                    watch.end()
                end = stamp_now()
                for msg in batch:
                    msg.meta.stamps.append(StageStamp(name, start, end))
                if not held and not done:
                    held_since = end
                if ch.outbox is None:
                    done.extend(msg.meta for msg in batch)
                else:
                    held.extend(outputs)
                # Wait for the next input's outputs only if it is there now and, taking as long as this one
                # took, would still be done within the window (a detector call of 10-50 ms never holds one).
                if (
                    not self._pending_eos
                    and len(held) + len(done) < PACK_MAX
                    and stamp_now() + (end - start) - held_since < self.pack_window_s
                    and self._more_ready()
                ):
                    continue
            if not self._flush(held, done):
                return False
            held, done = [], []
            pending, self._pending_eos = self._pending_eos, []
            for eos in pending:
                self._open_streams.discard(eos.stream)
                if self.caps.drains and ch.outbox is not None:
                    rest = self.stage.end_stream(eos.stream)
                    if rest and not self._flush(rest, []):
                        return False
                if ch.outbox is None:
                    if not self._send(Finished(name, eos.reason, stream=eos.stream)):
                        return False
                elif not self._put(eos):
                    return False
            if pending and not self._open_streams:
                return True

    def _flush(self, held: list[Any], done: list[FrameMeta]) -> bool:
        """Send what was held: one item per next queue (a FrameBatch for several), the sink reports in one."""
        if done and not self._send(FrameDone(done[0]) if len(done) == 1 else FramesDone(done)):
            return False
        groups: dict[int, tuple[Any, list[Any]]] = {}
        for msg in held:
            outbox = self._outbox_for(msg)
            groups.setdefault(id(outbox), (outbox, []))[1].append(msg)
        return all(self._put(_packed(msgs), outbox) for outbox, msgs in groups.values())

    def _more_ready(self) -> bool:
        """Whether the next message is already there (the rest of a FrameBatch, or one in the inbox)."""
        assert self._inbox is not None
        return bool(self._backlog) or self._inbox.ready()

    def _take(self, timeout: float | None) -> Any:
        """The next message: the backlog's first, else the inbox's (waiting up to `timeout`, None: not at
        all), a FrameBatch unpacked into the backlog; queue.Empty when there is none."""
        if not self._backlog:
            assert self._inbox is not None
            item = self._inbox.get_nowait() if timeout is None else self._inbox.get(timeout=timeout)
            if not isinstance(item, FrameBatch):
                return item
            self._backlog.extend(item.messages)
        return self._backlog.popleft()

    def _next_batch(self) -> list[Any] | None:
        """Up to max_batch queued messages (blocking only for the first); None on a stop request.

        An EndOfStream ends the batch (it is passed on after the batch's frames, which came before it)."""
        ch = self.channels
        while True:
            if ch.stop.is_set():
                return None
            try:
                first = self._take(self.poll_s)
                break
            except queue.Empty:
                continue
        if isinstance(first, EndOfStream):
            self._pending_eos.append(first)
            return []
        batch = [first]
        # Catch up when behind: take what is already queued, but never wait for more.
        while len(batch) < self.max_batch:
            try:
                msg = self._take(None)
            except queue.Empty:
                break
            if isinstance(msg, EndOfStream):
                self._pending_eos.append(msg)
                break
            batch.append(msg)
        return batch

    # -- I/O helpers --------------------------------------------------------------------------------------

    def _put(self, msg: Any, outbox: Any = None) -> bool:
        """Put on the bounded outbox (`msg`'s, unless given), waiting while it is full; False if a stop came
        meanwhile."""
        ch = self.channels
        if outbox is None:
            outbox = self._outbox_for(msg)
        while True:
            try:
                outbox.put(msg, timeout=self.poll_s)
                return True
            except queue.Full:
                if ch.stop.is_set():
                    return False

    def _outbox_for(self, msg: Any) -> Any:
        """The queue for `msg`: the one outbox, or the one its stream is routed to."""
        outbox = self.channels.outbox
        if not isinstance(outbox, dict):
            return outbox
        stream = msg.stream if isinstance(msg, EndOfStream) else msg.meta.stream
        return outbox[stream]

    def _outboxes(self) -> list[Any]:
        outbox = self.channels.outbox
        if outbox is None:
            return []
        return list({id(q): q for q in outbox.values()}.values()) if isinstance(outbox, dict) else [outbox]

    def _send(self, msg: Any) -> bool:
        try:
            self.channels.control.send(msg)
            return True
        except (BrokenPipeError, EOFError, OSError):
            return False  # the supervisor is gone; nothing left to tell

    def _close_stage(self) -> None:
        try:
            self.stage.close()
        except Exception:  # noqa: BLE001 - closing must not hide why the stage ended
            log.warning("%s: close() failed", self.stage.name, exc_info=True)


# -- process entry ------------------------------------------------------------------------------------------


PROCESS_NAME_PREFIX = "fp-"  # stage processes show as fp-capture, fp-detect... in ps, top and /proc/PID/comm


def _prepare_linux_process(stage_name: str) -> None:
    """Name the process after its stage, and have Linux SIGKILL it when the supervisor dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig, pr_set_name = 1, 15
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        libc.prctl(pr_set_name, ctypes.c_char_p(f"{PROCESS_NAME_PREFIX}{stage_name}"[:15].encode()), 0, 0, 0)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(EXIT_FAILED)  # the parent died before prctl took effect


def _end_now(code: int) -> None:
    """End the process at once, with nothing unwound (what was logged is flushed)."""
    sys.stderr.flush()
    os._exit(code)


def _end_on_unraisable_stop(unraisable: Any) -> None:
    """The SIGTERM's SystemExit raised where Python cannot raise it (a finaliser, a C callback): end the
    process as the stop asked, instead of a printed trace and a process that goes on until it is killed."""
    if isinstance(unraisable.exc_value, SystemExit):
        _end_now(unraisable.exc_value.code if isinstance(unraisable.exc_value.code, int) else EXIT_FAILED)
    sys.__unraisablehook__(unraisable)


def stage_process_main(
    stage: Any,
    channels: StageChannels,
    log_level: str = "WARNING",
    node_name: str | None = None,
    slow_call_s: float = 0.0,
) -> None:
    """Target of each stage process (spawn): prepare the process, run the stage, exit with its code.

    `node_name` names the process (several capture nodes run the same stage class, one per camera)."""
    # Ctrl-C reaches the whole process group; the supervisor alone decides how the run stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = StageRunner(stage, channels, node=node_name, slow_call_s=slow_call_s)
    signal.signal(signal.SIGTERM, runner.on_sigterm)
    sys.unraisablehook = _end_on_unraisable_stop
    _prepare_linux_process(node_name or stage.name)
    logging.basicConfig(
        level=getattr(logging, str(log_level).upper(), logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s",
    )
    code = runner.run()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # nothing left to unwind: a stop now just ends it
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
