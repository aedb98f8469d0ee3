"""The shared stage loop, driven in-process (a thread, queue.Queue, a real Pipe): no stage processes."""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import threading
import time

import numpy as np
import pytest

from app.errors import UserError
from app.pipeline.messages import (
    EndOfStream,
    Failed,
    Finished,
    FrameBatch,
    FrameDone,
    FrameMeta,
    FrameRef,
    FramesDone,
    Ready,
    SourceInfo,
    StageStamp,
    Start,
    Started,
)
from app.pipeline.stage_runner import (
    NOTHING_YET,
    PACK_MAX,
    Capabilities,
    StageChannels,
    StageRunner,
    StopPipeline,
    unpacked,
)
from tests.support.waiting import GUARD_S, wait_until

SOURCE = SourceInfo(frame_shape=(6, 8, 3), fps=25.0, live=False, source="test")


def ref(index: int) -> FrameRef:
    stamps = [StageStamp("capture", 0.0, 0.0)]
    return FrameRef(FrameMeta(index % 4, index + 1, index, index / 30, width=8, height=6, stamps=stamps))


class Harness:
    """A stage's channels with the supervisor's end of the control pipe."""

    def __init__(self, inbox_size: int = 16, with_outbox: bool = True) -> None:
        self.supervisor_end, stage_end = multiprocessing.Pipe(duplex=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=inbox_size)
        self.outbox: queue.Queue | None = queue.Queue(maxsize=inbox_size) if with_outbox else None
        self.stop = threading.Event()
        self.channels = StageChannels(self.inbox, self.outbox, stage_end, self.stop)

    def run(self, stage, start: bool = True, **runner_args) -> tuple[threading.Thread, list]:
        result: list = []
        runner = StageRunner(stage, self.channels, poll_s=0.01, **runner_args)
        thread = threading.Thread(target=lambda: result.append(runner.run()))
        thread.start()
        if start:
            ready = self.supervisor_end.recv()
            assert isinstance(ready, Ready | Failed)
            if isinstance(ready, Ready):
                self.supervisor_end.send(Start({0: SOURCE}))
                caps = getattr(stage, "capabilities", None)
                if caps is not None and caps.starts:  # its start work is done before anything else
                    assert isinstance(self.supervisor_end.recv(), Started)
            else:
                self.early = ready
        return thread, result

    def messages(self, timeout: float = 1.0) -> list:
        out = []
        while self.supervisor_end.poll(timeout):
            msg = self.supervisor_end.recv()
            out.extend(FrameDone(m) for m in msg.metas) if isinstance(msg, FramesDone) else out.append(msg)
            timeout = 0.05
        return out

    def outputs(self) -> list:
        """Every message the stage sent on, FrameBatches unpacked."""
        assert self.outbox is not None
        out = []
        while not self.outbox.empty():
            out.extend(unpacked(self.outbox.get_nowait()))
        return out


class Brightness:
    """A consumer that computes a real statistic of a payload and records its calls."""

    name = "brightness"
    capabilities = Capabilities(batched=True, starts=True)

    def __init__(self, max_batch: int = 1) -> None:
        self.max_batch = max_batch
        self.calls: list[int] = []
        self.started_with: dict | None = None
        self.closed = False
        self.image = np.arange(48, dtype=np.uint8).reshape(6, 8)

    def setup(self) -> dict:
        return {"kind": "test"}

    def start(self, source_info: dict) -> None:
        self.started_with = source_info

    def process(self, msg):
        return self.process_batch([msg])

    def process_batch(self, msgs):
        self.calls.append(len(msgs))
        for msg in msgs:
            msg.meta.brightness = float((self.image + msg.meta.frame_index).mean())
        return msgs

    def close(self) -> None:
        self.closed = True


def test_consumer_stamps_forwards_and_passes_end_of_stream():
    h = Harness()
    stage = Brightness()
    thread, result = h.run(stage)
    for i in range(3):
        h.inbox.put(ref(i))
    h.inbox.put(EndOfStream("end of file", 3))
    thread.join(GUARD_S)
    assert result == [0] and stage.closed and stage.started_with == {0: SOURCE}
    out = h.outputs()
    assert len(out) == 4
    assert [m.meta.frame_index for m in out[:3]] == [0, 1, 2]
    assert [m.meta.brightness for m in out[:3]] == [23.5, 24.5, 25.5]
    assert all(m.meta.stamps[-1].stage == "brightness" for m in out[:3])
    assert all(m.meta.stamps[-1].end >= m.meta.stamps[-1].start > 0 for m in out[:3])
    assert isinstance(out[3], EndOfStream) and out[3].frames == 3


class Holding(Brightness):
    """A consumer that holds the last two frames back (as the name look-ahead does) until the end."""

    capabilities = Capabilities(batched=True, starts=True, drains=True)

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []
        self.drained: list[int] = []

    def process_batch(self, msgs):
        self.held += super().process_batch(msgs)
        out, self.held = self.held[:-2], self.held[-2:]
        return out

    def end_stream(self, stream: int) -> list:
        self.drained.append(stream)
        out, self.held = self.held, []
        return out


def test_a_draining_stage_sends_what_it_held_before_the_end_of_stream():
    h = Harness()
    stage = Holding()
    thread, result = h.run(stage)
    for i in range(4):
        h.inbox.put(ref(i))
    h.inbox.put(EndOfStream("end of file", 4))
    thread.join(GUARD_S)
    assert result == [0] and stage.drained == [0]
    out = h.outputs()
    assert [m.meta.frame_index for m in out[:4]] == [0, 1, 2, 3]
    assert [m.meta.brightness for m in out[:4]] == [23.5, 24.5, 25.5, 26.5]
    assert isinstance(out[4], EndOfStream) and len(out) == 5


def test_batches_only_what_is_already_queued():
    h = Harness()
    stage = Brightness(max_batch=4)
    for i in range(6):
        h.inbox.put(ref(i))
    thread, _ = h.run(stage)
    wait_until(lambda: sum(stage.calls) >= 6, "six frames processed", poll_s=0.005)
    assert stage.calls == [4, 2]  # caught up in bounded batches
    h.inbox.put(ref(6))  # idle pipeline: a lone frame goes through at once, without waiting for company
    wait_until(lambda: sum(stage.calls) >= 7, "the lone frame processed", poll_s=0.005)
    assert stage.calls[-1] == 1
    h.stop.set()
    thread.join(GUARD_S)
    assert not thread.is_alive()


def test_frames_that_were_waiting_go_on_together_and_a_lone_frame_at_once():
    h = Harness(inbox_size=PACK_MAX + 8)
    stage = Brightness()  # one frame a call
    for i in range(5):
        h.inbox.put(ref(i))
    h.inbox.put(FrameBatch([ref(5), ref(6)]))  # a batch from upstream is unpacked, in order
    thread, _ = h.run(stage, pack_window_s=GUARD_S)  # no window: what was waiting goes on together
    item = h.outbox.get(timeout=GUARD_S)
    assert stage.calls == [1] * 7
    assert isinstance(item, FrameBatch) and [m.meta.frame_index for m in item.messages] == list(range(7))
    assert all(m.meta.stamps[-1].stage == "brightness" for m in item.messages)
    h.inbox.put(ref(7))  # idle: the lone frame goes on alone, without waiting for company
    lone = h.outbox.get(timeout=GUARD_S)
    assert isinstance(lone, FrameRef) and lone.meta.frame_index == 7
    h.stop.set()
    thread.join(GUARD_S)
    assert not thread.is_alive()


def test_with_no_pack_window_every_frame_goes_on_by_itself():
    h = Harness()
    for i in range(3):
        h.inbox.put(ref(i))
    h.inbox.put(EndOfStream("end of file", 3))
    thread, _ = h.run(Brightness(), pack_window_s=0.0)
    thread.join(GUARD_S)
    items = [h.outbox.get_nowait() for _ in range(h.outbox.qsize())]
    assert [type(i) for i in items] == [FrameRef, FrameRef, FrameRef, EndOfStream]


def test_the_sink_reports_frames_done_together():
    h = Harness(with_outbox=False)
    for i in range(3):
        h.inbox.put(ref(i))
    h.inbox.put(EndOfStream("end of file", 3))
    thread, result = h.run(Brightness(), pack_window_s=GUARD_S)
    thread.join(GUARD_S)
    raw = []
    while h.supervisor_end.poll(0.2):
        raw.append(h.supervisor_end.recv())
    assert [type(m) for m in raw] == [FramesDone, Finished] and result == [0]
    assert [m.frame_index for m in raw[0].metas] == [0, 1, 2]


def test_last_stage_reports_every_frame_and_the_end():
    h = Harness(with_outbox=False)
    thread, result = h.run(Brightness())
    h.inbox.put(ref(0))
    h.inbox.put(ref(1))
    h.inbox.put(EndOfStream("end of file", 2))
    thread.join(GUARD_S)
    messages = h.messages()
    assert [type(m) for m in messages] == [FrameDone, FrameDone, Finished]
    assert messages[0].meta.stamps[-1].stage == "brightness"
    assert messages[2].reason == "end of file" and result == [0]


def test_stop_event_ends_a_waiting_stage_quickly():
    h = Harness()
    stage = Brightness()
    thread, result = h.run(stage)
    h.stop.set()
    thread.join(GUARD_S)  # a failure guard: the runner polls the stop event between waits for input
    assert not thread.is_alive() and result == [0] and stage.closed


def test_stop_before_start_still_closes():
    h = Harness()
    stage = Brightness()
    thread, result = h.run(stage, start=False)
    assert isinstance(h.supervisor_end.recv(), Ready)
    h.stop.set()
    thread.join(GUARD_S)
    assert result == [0] and stage.closed and stage.started_with is None


class Broken(Brightness):
    def __init__(self, fail_in: str, exc: Exception) -> None:
        super().__init__()
        self.fail_in, self.exc = fail_in, exc

    def setup(self) -> dict:
        if self.fail_in == "setup":
            raise self.exc
        return {}

    def process(self, msg):
        if self.fail_in == "process":
            raise self.exc
        if self.fail_in == "stop":
            raise StopPipeline("window closed")
        return [msg]


def test_setup_user_error_is_one_line_and_exit_code_2():
    h = Harness()
    stage = Broken("setup", UserError("model file x.onnx does not exist; check the path"))
    thread, result = h.run(stage)
    thread.join(GUARD_S)
    failed = h.early
    assert failed == Failed("brightness", "model file x.onnx does not exist; check the path", True, True)
    assert result == [2] and stage.closed


def test_process_error_is_reported_with_its_type():
    h = Harness()
    thread, result = h.run(Broken("process", ValueError("bad\nshape")))
    h.inbox.put(ref(0))
    thread.join(GUARD_S)
    [failed] = h.messages()
    assert failed == Failed("brightness", "ValueError: bad shape", False, False) and result == [1]


def test_stop_pipeline_from_a_stage_is_an_orderly_finish():
    h = Harness()
    thread, result = h.run(Broken("stop", ValueError()))
    h.inbox.put(ref(0))
    thread.join(GUARD_S)
    assert h.messages() == [Finished("brightness", "window closed")] and result == [0]


class CountingSource:
    """A source that yields `total` frames, idling every other call, with an optional live drop policy."""

    name = "capture"
    capabilities = Capabilities(source=True)

    def __init__(self, total: int, live: bool = False) -> None:
        self.total = total
        self.frames_read = 0
        self.live = live
        self.discarded: list[int] = []
        self.end_reason = "end of file"
        self._tick = 0

    def setup(self) -> SourceInfo:
        return SourceInfo(frame_shape=(6, 8, 3), fps=25.0, live=self.live, source="counting")

    def produce(self):
        self._tick += 1
        if self._tick % 2:
            return NOTHING_YET
        if self.frames_read == self.total:
            return None
        self.frames_read += 1
        return ref(self.frames_read - 1)

    def discard(self, msg) -> None:
        self.discarded.append(msg.meta.frame_index)

    def close(self) -> None:
        pass


def test_source_waits_for_start_then_produces_until_the_end():
    h = Harness()
    source = CountingSource(3)
    thread, result = h.run(source, start=False)
    assert isinstance(h.supervisor_end.recv(), Ready)
    time.sleep(0.05)  # a chance to misbehave (a loaded machine only makes it smaller, never a failure)
    assert h.outbox.empty() and source.frames_read == 0  # nothing before Start
    h.supervisor_end.send(Start({}))
    thread.join(GUARD_S)
    out = h.outputs()
    assert len(out) == 4
    assert [m.meta.frame_index for m in out[:3]] == [0, 1, 2]
    assert out[3] == EndOfStream("end of file", 3) and result == [0]


def test_live_source_drops_instead_of_blocking_on_a_full_queue():
    h = Harness(inbox_size=2)
    source = CountingSource(5, live=True)
    thread, result = h.run(source)
    wait_until(lambda: len(source.discarded) >= 3, "three frames given back", poll_s=0.005)
    assert source.discarded == [2, 3, 4]  # the queue held two; later frames were given back, not waited on
    # ...but the end of the stream is never dropped: the runner waits for room for it.
    time.sleep(0.05)  # a chance to drop it, were it droppable
    assert thread.is_alive() and h.outbox.qsize() == 2
    assert [h.outbox.get().meta.frame_index for _ in range(2)] == [0, 1]
    thread.join(GUARD_S)
    assert h.outbox.get_nowait() == EndOfStream("end of file", 5) and result == [0]


@pytest.mark.parametrize("stage", [Brightness(), CountingSource(1)])
def test_ready_carries_setup_info(stage):
    h = Harness()
    thread, _ = h.run(stage, start=False)
    ready = h.supervisor_end.recv()
    assert ready.stage == stage.name and ready.info == stage.setup()
    h.stop.set()
    thread.join(GUARD_S)


class Heavy(Brightness):
    """A consumer with a model: its calls are metered as the detection stage meters its model."""

    def __init__(self, cpu_clock) -> None:
        super().__init__(max_batch=1)
        from app.pipeline.cpu_meter import ModelCpu

        self.model_cpu = ModelCpu(cpu_clock)

    def setup(self) -> dict:
        with self.model_cpu.measure():  # a warm-up call: not the loop's
            self.image.astype(np.float64).sum()
        return {}

    def process_batch(self, msgs):
        with self.model_cpu.measure():
            np.linalg.svd(np.random.default_rng(0).normal(size=(60, 60)))
        return super().process_batch(msgs)


def test_the_loop_logs_its_cpu_the_models_share_and_the_frames_it_took(caplog):
    from app.pipeline.cpu_meter import parse_cpu_lines

    ticks = itertools.count()  # a CPU clock one second further on at every reading: no real clock is read
    cpu_clock = lambda: float(next(ticks))  # noqa: E731
    h = Harness()
    stage = Heavy(cpu_clock)
    with caplog.at_level("INFO", logger="app.pipeline.stage_runner"):
        thread, result = h.run(stage, cpu_clock=cpu_clock)
        for i in range(5):
            h.inbox.put(ref(i))
        h.inbox.put(EndOfStream("end of file", 5))
        thread.join(GUARD_S)
    assert result == [0]
    found = parse_cpu_lines(caplog.text)
    cpu = found["brightness"]
    assert cpu.items == 5 and stage.model_cpu.calls == 5  # the warm-up call was forgotten at the start
    assert cpu.model_s == stage.model_cpu.seconds  # the line reports the meter's own sum
    # 5 model calls of one tick each; the loop spans its two readings and the calls' ten in between
    assert (cpu.model_s, cpu.loop_s) == (5.0, 11.0)
