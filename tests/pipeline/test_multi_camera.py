"""Several cameras in one run: fair shared inputs, per-stream ends, routing by stream, cameras that cannot
start, and the whole graph of real capture stages and small real stages (pipeline_fakes.py).

The end-to-end runs with models are in test_multi_camera_e2e.py.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.exit_codes import EXIT_USER_ERROR
from app.pipeline.channels import FairInbox
from app.pipeline.graph import Channel, Node, PipelineGraph, Stream
from app.pipeline.messages import (
    EndOfStream,
    Finished,
    FrameDone,
    FrameMeta,
    FrameRef,
    FramesDone,
    Ready,
    StageStamp,
    Start,
)
from app.pipeline.stage_runner import Capabilities, StageChannels, StageRunner, unpacked
from app.pipeline.supervisor import Supervisor
from tests.pipeline.pipeline_fakes import build_cameras, make_video
from tests.support.waiting import GUARD_S, wait_until


def ref(stream: int, index: int) -> FrameRef:
    meta = FrameMeta(0, index + 1, index, index / 25, 8, 6, [StageStamp("capture", 0.0, 0.0)], stream=stream)
    return FrameRef(meta)


def test_a_shared_inbox_takes_from_every_stream_in_turn():
    busy, quiet = queue.Queue(), queue.Queue()
    for i in range(6):
        busy.put(ref(0, i))
    quiet.put(ref(1, 0))
    quiet.put(ref(1, 1))
    inbox = FairInbox([busy, quiet])
    taken = [inbox.get_nowait().meta.stream for _ in range(5)]
    # A backlog on one camera does not push the other's frames to the back.
    assert taken == [0, 1, 0, 1, 0]
    with pytest.raises(queue.Empty):
        FairInbox([queue.Queue()]).get(timeout=0.01)


@contextmanager
def spawn_queues(n: int) -> Iterator[tuple[Any, list]]:
    """(spawn context, n of its queues), closed afterwards without waiting for their feeder threads."""
    ctx = multiprocessing.get_context("spawn")
    queues = [ctx.Queue() for _ in range(n)]
    try:
        yield ctx, queues
    finally:
        for q in queues:
            q.cancel_join_thread()
            q.close()


def test_multiprocessing_queues_are_waited_on_together():
    with spawn_queues(2) as (_, (a, b)):
        inbox = FairInbox([a, b])
        threading.Timer(0.05, lambda: b.put(ref(1, 7))).start()
        assert inbox.get(timeout=GUARD_S).meta.frame_index == 7


def _fill(queues: list, items: list[tuple[int, int]]) -> None:
    """Child process: put (queue, frame) refs, then wait until every one is written into its pipe."""
    for q, index in items:
        queues[q].put(ref(q, index))
    for q in queues:
        q.close()
        q.join_thread()


def test_multiprocessing_queues_are_read_in_turn_and_an_empty_round_is_empty():
    with spawn_queues(3) as (ctx, queues):
        # Another process writes the messages and has flushed them all when it ends: a queue's own feeder
        # thread would still be writing some while the inbox looks, and the order would depend on it.
        filler = ctx.Process(target=_fill, args=(queues, [(0, 0), (0, 1), (0, 2), (0, 3), (2, 0), (2, 1)]))
        filler.start()
        filler.join(GUARD_S)
        assert filler.exitcode == 0
        inbox = FairInbox(queues)
        taken = [(m.meta.stream, m.meta.frame_index) for m in (inbox.get(timeout=GUARD_S) for _ in range(6))]
        assert taken == [(0, 0), (2, 0), (0, 1), (2, 1), (0, 2), (0, 3)]  # in turn, each queue in order
        with pytest.raises(queue.Empty):
            inbox.get_nowait()
        queues[1].put(ref(1, 5))  # a queue quiet so far is found by the next look
        assert inbox.get(timeout=GUARD_S).meta.stream == 1


def test_an_inbox_says_whether_a_message_is_there_without_taking_it():
    with spawn_queues(2) as (_, queues):
        inbox = FairInbox(queues)
        assert not inbox.ready()
        queues[1].put(ref(1, 0))
        wait_until(inbox.ready, "the message in its pipe")
        assert inbox.ready()  # looking took nothing
        assert inbox.get_nowait().meta.stream == 1
        assert not inbox.ready()


class Counter:
    """A consumer serving two streams that counts the frames it saw per stream."""

    name = "count"
    capabilities = Capabilities(starts=True)

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def setup(self) -> dict:
        return {}

    def start(self, sources) -> None:
        self.sources = sources

    def process(self, msg):
        self.seen[msg.meta.stream] = self.seen.get(msg.meta.stream, 0) + 1
        return [msg]

    def close(self) -> None:
        pass


def run_counter(with_outbox: bool):
    supervisor_end, stage_end = multiprocessing.Pipe(duplex=True)
    inbox, outbox = queue.Queue(), queue.Queue() if with_outbox else None
    stop = threading.Event()
    stage = Counter()
    runner = StageRunner(stage, StageChannels(inbox, outbox, stage_end, stop), poll_s=0.01)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()
    assert isinstance(supervisor_end.recv(), Ready)
    supervisor_end.send(Start({0: None, 1: None}))  # two streams
    return stage, inbox, outbox, supervisor_end, thread, result


def test_one_streams_end_passes_on_and_the_stage_runs_until_every_stream_ended():
    stage, inbox, outbox, _, thread, result = run_counter(with_outbox=True)
    inbox.put(ref(0, 0))
    inbox.put(EndOfStream("end of stream", 1, stream=0))
    inbox.put(ref(1, 0))
    inbox.put(ref(1, 1))
    wait_until(lambda: stage.seen == {0: 1, 1: 2}, "the three frames handled", poll_s=0.005)
    assert thread.is_alive()  # stream 0's end was passed on, stream 1 has not ended: the stage goes on
    inbox.put(EndOfStream("end of stream", 2, stream=1))
    thread.join(GUARD_S)
    assert result == [0] and stage.seen == {0: 1, 1: 2}
    out = [m for _ in range(outbox.qsize()) for m in unpacked(outbox.get_nowait())]
    assert len(out) == 5
    assert [type(m).__name__ for m in out] == [
        "FrameRef",
        "EndOfStream",
        "FrameRef",
        "FrameRef",
        "EndOfStream",
    ]
    assert [m.stream for m in out if isinstance(m, EndOfStream)] == [0, 1]


def test_the_last_stage_reports_each_streams_end():
    _, inbox, _, supervisor_end, thread, result = run_counter(with_outbox=False)
    inbox.put(EndOfStream("end of stream", 0, stream=1))
    inbox.put(ref(0, 0))
    inbox.put(EndOfStream("frame limit reached (1)", 1, stream=0))
    thread.join(GUARD_S)
    messages = []
    try:
        while supervisor_end.poll(0.2):
            messages.append(supervisor_end.recv())
    except EOFError:  # the stage's end of the pipe is gone with it
        pass
    assert result == [0]
    assert [m for m in messages if isinstance(m, Finished)] == [
        Finished("count", "end of stream", stream=1),
        Finished("count", "frame limit reached (1)", stream=0),
    ]
    assert (
        sum(isinstance(m, FrameDone) for m in messages)
        + sum(len(m.metas) for m in messages if isinstance(m, FramesDone))
        == 1
    )


def test_a_graph_checks_its_channels():
    from app.pipeline.frame_ring import FrameRingHandle
    from app.stages.capture import CaptureStage

    handle = FrameRingHandle("unused", None)
    nodes = [Node("capture", CaptureStage("x.mp4", handle), 0), Node("a", Counter()), Node("b", Counter())]
    streams = [Stream(0, "default", handle, "capture")]
    with pytest.raises(ValueError, match="disjoint"):
        PipelineGraph(nodes, [Channel("capture", "a", 2), Channel("capture", "b", 2)], streams)
    routed = [Channel("capture", "a", 2, streams=(0,)), Channel("capture", "b", 2, streams=(1,))]
    assert len(PipelineGraph(nodes, routed, streams).outputs("capture")) == 2
    with pytest.raises(ValueError, match="unknown node"):
        PipelineGraph(nodes, [Channel("capture", "nowhere", 2)], streams)


# -- whole runs (real capture processes, small real stages) ----------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("videos")
    return [make_video(folder / "short.mp4", frames=20), make_video(folder / "long.mp4", frames=45)]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_camera_loses_nothing_and_the_run_ends_when_the_last_one_ends(videos, tmp_path):
    out = tmp_path / "frames.jsonl"
    graph = build_cameras([str(v) for v in videos], out)
    handles = [s.ring for s in graph.streams]
    result = Supervisor(graph, ring_slots=4).run()
    assert result.exit_code == 0 and result.stop_reason == "end of stream"
    rows = rows_of(out)
    for stream, frames in ((0, 20), (1, 45)):
        mine = [r for r in rows if r["stream"] == stream]
        assert [r["frame"] for r in mine] == list(range(frames))  # in order, none lost
        assert all(abs(r["mean"] - 5 * r["frame"]) < 4 for r in mine[5:])  # each camera's own pixels
    summary = result.summary
    assert summary["frames"] == 65 and summary["dropped"] == 0
    assert {name: c["frames"] for name, c in summary["cameras"].items()} == {"cam0": 20, "cam1": 45}
    assert set(summary["cameras"]["cam0"]["latency_ms"]["end_to_end"]) == {"p50", "p95", "p99"}
    assert set(result.sources) == {0, 1} and result.sources[1].camera == "cam1"
    assert multiprocessing.active_children() == []
    assert not any(Path("/dev/shm", h.name).exists() for h in handles)


def test_a_camera_that_cannot_start_is_a_warning_while_the_others_run(videos, tmp_path, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    out = tmp_path / "frames.jsonl"
    result = Supervisor(build_cameras([str(broken), str(videos[0])], out), ring_slots=4).run()
    assert result.exit_code == 0 and result.stop_reason == "end of stream"
    assert [r["stream"] for r in rows_of(out)] == [1] * 20
    assert (
        list(result.camera_errors) == ["cam0"] and "cannot decode video file" in result.camera_errors["cam0"]
    )
    assert "camera cam0 did not start" in caplog.text
    assert (
        set(result.summary["cameras"]) == {"cam0", "cam1"}
        and result.summary["cameras"]["cam0"]["frames"] == 0
    )


def test_when_every_camera_fails_the_run_stops_with_the_first_ones_error(tmp_path):
    broken = [tmp_path / f"broken{i}.mp4" for i in range(2)]
    for path in broken:
        path.write_bytes(b"nope")
    result = Supervisor(build_cameras([str(p) for p in broken], tmp_path / "f.jsonl"), ring_slots=4).run()
    assert result.exit_code == EXIT_USER_ERROR and result.summary is None
    assert (
        result.error
        == f"capture: cannot decode video file {broken[0]}: not a video, or not a format FFmpeg reads"
    )
    assert multiprocessing.active_children() == []


class NoteTaker(Counter):
    capabilities = Capabilities(starts=True, notes=True)

    def __init__(self) -> None:
        super().__init__()
        self.notes: dict[int, str] = {}

    def note(self, stream: int, text: str) -> None:
        self.notes[stream] = text


def test_a_stage_that_takes_notes_hears_why_a_camera_did_not_start():
    supervisor_end, stage_end = multiprocessing.Pipe(duplex=True)
    stop = threading.Event()
    stage = NoteTaker()
    runner = StageRunner(stage, StageChannels(queue.Queue(), None, stage_end, stop), poll_s=0.01)
    thread = threading.Thread(target=runner.run)
    thread.start()
    assert isinstance(supervisor_end.recv(), Ready)
    supervisor_end.send(Start({1: None}, notes={0: "cannot open video stream rtsp://***@cam"}))
    wait_until(lambda: stage.notes, "the notes reaching the stage", poll_s=0.01)
    stop.set()
    thread.join(GUARD_S)
    assert stage.notes == {0: "cannot open video stream rtsp://***@cam"}
