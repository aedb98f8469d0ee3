"""Supervisor: start-up handshake, end of file, errors, Ctrl-C and killed stages, and nothing left behind.

The pipeline here is the real capture stage on a small generated video plus small real stages
(`pipeline_fakes.py`), so these run in seconds; tests/pipeline/test_pipeline_e2e.py repeats the signal tests
on the real CLI with real models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from app.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USER_ERROR
from app.pipeline.graph import Node, PipelineGraph
from app.pipeline.supervisor import Supervisor
from app.stages.capture import CaptureStage
from tests.pipeline.pipeline_fakes import StartingMeanStage, VirtualClock, build, make_video
from tests.pipeline.process_checks import RunningPipeline, shm_segments, still_alive
from tests.support.waiting import GUARD_S, wait_until

FAKES = Path(__file__).resolve().parent / "pipeline_fakes.py"
STAGES = ["capture", "detect", "postprocess", "recognize", "gui"]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "grey.mp4", frames=40)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "long.mp4", frames=400)


def run_in_process(video: Path, out: Path, stop_timeout_s: float = 1.2, **kwargs):
    stages, handle = build(video, out, **kwargs)
    result = Supervisor(stages, handle, ring_slots=4, stop_timeout_s=stop_timeout_s).run()
    return result, handle


def assert_clean(handle) -> None:
    assert multiprocessing.active_children() == []
    assert not Path("/dev/shm", handle.name).exists()


def test_end_of_file_processes_every_frame_in_order(video, tmp_path):
    out = tmp_path / "frames.jsonl"
    result, handle = run_in_process(video, out)
    assert result.exit_code == 0 and result.stop_reason == "end of stream"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(40))
    # The pixels that reached the stages are the frames' own: grey level 5 * i (give or take the codec).
    assert all(abs(r["mean"] - 5 * r["frame"]) < 4 for r in rows[5:])
    summary = result.summary
    assert summary["frames"] == 40 and summary["dropped"] == 0 and summary["stop_reason"] == "end of stream"
    assert set(summary["latency_ms"]) == {*STAGES, "end_to_end"}
    assert result.source_info.frame_shape == (48, 64, 3) and result.source_info.live is False
    assert_clean(handle)


def test_a_capture_reporting_nv12_gets_an_nv12_ring_every_stage_reads(video, tmp_path):
    from tests.pipeline.pipeline_fakes import FormatSink, Nv12CaptureStage, PassStage

    means = {}
    for kind, capture in (("nv12", Nv12CaptureStage), ("bgr", CaptureStage)):
        handle = Supervisor.new_ring_handle()
        out = tmp_path / f"{kind}.jsonl"
        stages = [capture(str(video), handle, max_speed=True), PassStage("detect"), FormatSink(handle, out)]
        result = Supervisor(stages, handle, ring_slots=4).run()
        assert result.exit_code == 0, result.reason
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["frame"] for line in lines] == list(range(40))
        assert {line["format"] for line in lines} == {kind}
        means[kind] = [line["bgr_mean"] for line in lines]
        assert_clean(handle)
    # The grey video read back as BGR through either ring (NV12 rounds a level at most).
    assert max(abs(a - b) for a, b in zip(means["nv12"], means["bgr"], strict=True)) < 1.0


def test_sources_start_once_the_consumers_start_work_is_done(video, tmp_path, caplog):
    # The detection stage's start(sources) (page-locking rings on a GPU) must not overlap the first frames:
    # no frame is published before it ends, and the run then goes through every frame.
    # Its node is named apart from the stage, as a second detector's or a tracking lane's ("detect:2").
    marker = tmp_path / "published_at_start.txt"
    stages, handle = build(video, tmp_path / "f.jsonl")
    stages[1] = StartingMeanStage(handle, start_s=0.5, started_marker=marker)
    graph = PipelineGraph.linear(stages, handle, 4)
    graph.nodes[1] = Node("detect:2", stages[1])
    graph.channels[0] = dataclasses.replace(graph.channels[0], dst="detect:2")
    graph.channels[1] = dataclasses.replace(graph.channels[1], src="detect:2")
    with caplog.at_level(logging.INFO, logger="app.pipeline.supervisor"):
        result = Supervisor(graph, ring_slots=4).run()
    assert "started without waiting longer" not in caplog.text  # its Started was heard, not timed out
    assert result.exit_code == 0 and result.summary["frames"] == 40
    assert marker.read_text() == "0"
    assert_clean(handle)


def test_paced_file_plays_at_its_own_fps(video, tmp_path):
    # The capture process keeps its schedule on a clock that moves only when it waits: at 20 fps each of the
    # 40 frames' intervals is waited out (the last before the read that finds the end), exactly, however
    # loaded the machine.
    moved = tmp_path / "waited.txt"
    result, handle = run_in_process(video, tmp_path / "f.jsonl", max_speed=False, clock=VirtualClock(moved))
    assert result.summary["frames"] == 40 and result.summary["dropped"] == 0
    assert float(moved.read_text()) == pytest.approx(40 / 20)
    assert_clean(handle)


def test_setup_failure_is_one_line_user_error_and_nothing_starts(video, tmp_path):
    result, handle = run_in_process(video, tmp_path / "f.jsonl", fail="setup")
    assert result.exit_code == EXIT_USER_ERROR and result.summary is None
    assert result.error == "detect: model file missing.onnx does not exist; check the path"
    assert not (tmp_path / "f.jsonl").exists() or (tmp_path / "f.jsonl").read_text() == ""  # no frame ran
    assert_clean(handle)


GALLERY_ERROR = "gallery of 512-d vectors, embedder gives 128; use another FACEPIPE_QDRANT_COLLECTION"


@pytest.mark.parametrize("detect_setup_s", [0.0, 0.3])
def test_two_setup_failures_report_the_one_nearest_the_source(video, tmp_path, detect_setup_s):
    # Recognition fails at once; detection fails too, after loading for a while: its error is the one shown,
    # whatever the order the two arrive in.
    result, handle = run_in_process(
        video, tmp_path / "f.jsonl", fail="setup", setup_s=detect_setup_s, recognize_error=GALLERY_ERROR
    )
    assert result.exit_code == EXIT_USER_ERROR and result.summary is None
    assert result.error == "detect: model file missing.onnx does not exist; check the path"
    assert_clean(handle)


def test_a_stage_found_dead_in_setup_is_reported_by_the_error_it_sent(video, tmp_path, monkeypatch):
    # Detection sends its Failed and exits between two reads of the pipes (a loaded machine): when the
    # supervisor then finds it dead, the message still waiting in its pipe is the error, not the exit code.
    read = Supervisor._poll

    def read_after_detect_is_gone(self, timeout):
        detect = self._children.get("detect")
        if detect is not None and not detect.ready:
            detect.process.join(GUARD_S)
            return []
        return read(self, timeout)

    monkeypatch.setattr(Supervisor, "_poll", read_after_detect_is_gone)
    result, handle = run_in_process(video, tmp_path / "f.jsonl", fail="setup")
    assert result.exit_code == EXIT_USER_ERROR
    assert result.error == "detect: model file missing.onnx does not exist; check the path"
    assert_clean(handle)


def test_at_the_end_of_the_stream_stages_may_take_their_time_to_close(video, tmp_path):
    # Recognition's close() drains for longer than a stop allows (its unknown faces' store, a video's last
    # frames): the stream ended, so it is not cut short.
    closed = tmp_path / "recognize-closed"
    result, handle = run_in_process(
        video, tmp_path / "f.jsonl", stop_timeout_s=0.1, close_s=1.0, closed_marker=closed
    )
    assert result.exit_code == 0 and result.stop_reason == "end of stream"
    assert closed.read_text() == "closed"
    assert_clean(handle)


def test_a_setup_failure_waits_only_briefly_for_slower_stages(video, tmp_path):
    # Detection is fine but slow to load (a big model): recognition's error is shown after a short wait.
    loaded = tmp_path / "detect-loaded"
    result, handle = run_in_process(
        video, tmp_path / "f.jsonl", setup_s=8.0, recognize_error=GALLERY_ERROR, loaded_marker=loaded
    )
    assert result.exit_code == EXIT_USER_ERROR and result.error == f"recognize: {GALLERY_ERROR}"
    assert not loaded.exists()  # reported while detection was still loading: its load was not waited for
    assert_clean(handle)


def test_stage_exception_stops_the_run_naming_the_stage(video, tmp_path):
    result, handle = run_in_process(video, tmp_path / "f.jsonl", fail="process")
    assert result.exit_code == EXIT_FAILED
    assert result.stop_reason == "stage detect failed: ValueError: cannot measure frame 3"
    assert result.summary["stop_reason"] == result.stop_reason and result.summary["frames"] <= 3
    assert_clean(handle)


def test_window_closed_ends_the_run_in_order(video, tmp_path):
    out = tmp_path / "f.jsonl"
    result, handle = run_in_process(video, out, stop_after=5)
    assert result.exit_code == 0 and result.stop_reason == "window closed"
    assert len(out.read_text().splitlines()) == 5
    assert_clean(handle)


def start_fake(video: Path, out: Path, *extra: str) -> RunningPipeline:
    run = RunningPipeline([str(FAKES), str(video), str(out), "--paced", *extra])
    assert run.wait_for_stderr("pipeline running", timeout=120), run.stderr
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 3, "frames reaching the sink")
    # The five stages, plus multiprocessing's resource tracker.
    assert sorted(c for c in run.record_stages().values() if c.startswith("fp-")) == sorted(
        f"fp-{s}" for s in STAGES
    ), run.stage_pids
    return run


def test_sigint_to_the_parent_stops_everything(long_video, tmp_path):
    run = start_fake(long_video, tmp_path / "f.jsonl")
    try:
        run.signal(signal.SIGINT)
        run.wait()
    finally:
        run.kill()
    assert run.proc.returncode == EXIT_INTERRUPTED, run.stderr
    assert "stopped: interrupted (Ctrl-C)" in run.stderr
    summary = run.summary()
    assert summary["stop_reason"] == "interrupted (Ctrl-C)" and summary["frames"] > 0
    assert still_alive(run.stage_pids) == [] and shm_segments(run.proc.pid) == []
    assert "Traceback" not in run.stderr and "leaked" not in run.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_stops_the_run_naming_it(long_video, tmp_path, stage):
    run = start_fake(long_video, tmp_path / "f.jsonl")
    try:
        os.kill(run.stage_pid(stage), signal.SIGKILL)
        run.wait()
    finally:
        run.kill()
    assert run.proc.returncode == EXIT_FAILED, run.stderr
    assert f"stopped: stage {stage} died unexpectedly (killed by SIGKILL)" in run.stderr
    assert run.summary()["stop_reason"] == f"stage {stage} died unexpectedly (killed by SIGKILL)"
    assert still_alive(run.stage_pids) == [] and shm_segments(run.proc.pid) == []
    assert "Traceback" not in run.stderr and "leaked" not in run.stderr
    # The sink's line-buffered file is complete up to where the run stopped.
    lines = (tmp_path / "f.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["frame"] == i for i, line in enumerate(lines))


def test_parent_killed_takes_every_stage_with_it(long_video, tmp_path):
    run = start_fake(long_video, tmp_path / "f.jsonl")
    try:
        run.proc.kill()
        run.proc.wait(60)
        assert still_alive(run.stage_pids) == []
        # Only the resource tracker can clean up after a SIGKILLed parent: wait for it to.
        wait_until(lambda: shm_segments(run.proc.pid) == [], "the ring unlinked after the parent died")
    finally:
        run.kill()
