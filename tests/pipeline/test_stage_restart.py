"""A capture process that dies on a live source is restarted by the supervisor; the rest keep running.

In-process supervisor runs (small real stages from pipeline_fakes.py, the real capture stage on the loopback
MJPEG server) check: SIGKILL detected and a new capture process started, frames continuing in order; a capture
that fails with an exception or dies holding the ring lock and a slot; the restart limit. The real CLI then
shows the same with models, and that other stages still stop the run cleanly, naming themselves. (A file
source is not restarted: tests/pipeline/test_supervisor.py and test_pipeline_e2e.py kill capture on a file
and check the clean stop.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from app.exit_codes import EXIT_FAILED
from app.pipeline.supervisor import RunResult, Supervisor
from app.stages.capture import CaptureStage
from tests.pipeline.pipeline_fakes import LinesSink, MeanStage, PassStage
from tests.pipeline.process_checks import RunningPipeline, children_of, shm_segments, still_alive
from tests.support.servers import MjpegServer
from tests.support.shared_data import HAMILTON
from tests.support.waiting import GUARD_S, wait_until


def grey_frames(count: int) -> list[np.ndarray]:
    return [np.full((120, 160, 3), 20 + (4 * i) % 200, np.uint8) for i in range(count)]


class DyingCapture(CaptureStage):
    """The real capture stage, made to fail in its first process only (restarted ones run normally):
    "raise" raises at frame 15, "hold" dies at frame 15 holding the ring lock and a slot being written."""

    def __init__(self, source: str, frames, how: str) -> None:
        super().__init__(source, frames)
        self.how = how

    def produce(self):
        first_process = self.restart_state is None or self.restart_state.restarts == 0
        if first_process and self.frames_read == 15:
            if self.how == "raise":
                raise RuntimeError("decoder went away")
            ring = self.frames.ring
            ring.acquire(live=True)  # a slot left "writing"
            self.frames.lock.acquire()  # and the lock every stage needs
            os.kill(os.getpid(), signal.SIGKILL)
        return super().produce()


class InProcessRun:
    """A Supervisor run in a thread of this process, with a line per frame written by the sink."""

    def __init__(self, tmp_path: Path, capture_factory, stop_after: int, **supervisor_options) -> None:
        self.out = tmp_path / "frames.jsonl"
        self.handle = Supervisor.new_ring_handle()
        stages = [
            capture_factory(self.handle),
            MeanStage(self.handle),
            PassStage("postprocess"),
            PassStage("recognize"),
            LinesSink(self.handle, self.out, stop_after=stop_after),
        ]
        self.supervisor = Supervisor(
            stages, self.handle, ring_slots=4, summary_every_s=60, **supervisor_options
        )
        self.result: list[RunResult] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.supervisor.run()), daemon=True)
        self.thread.start()

    def lines(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.endswith("}")]

    def wait_lines(self, count: int) -> None:
        wait_until(lambda: len(self.lines()) >= count or not self.thread.is_alive(), f"{count} lines")
        assert len(self.lines()) >= count, f"the run ended after {len(self.lines())} lines"

    def capture_pid(self, other_than: int | None = None) -> int:
        """The pid of the fp-capture process (one other than `other_than`: its replacement)."""

        def found() -> list[int]:
            children = children_of(os.getpid())
            return [p for p, name in children.items() if name == "fp-capture" and p != other_than]

        return wait_until(found, "a capture process", poll_s=0.005)[0]

    def finish(self, timeout: float = GUARD_S) -> RunResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"
        assert multiprocessing.active_children() == []
        assert not Path("/dev/shm", self.handle.name).exists()
        return self.result[0]


def assert_in_order(lines: list[dict]) -> None:
    frames = [line["frame"] for line in lines]
    assert frames == sorted(frames) and len(set(frames)) == len(frames), frames


def test_killed_capture_is_restarted_and_frames_go_on(tmp_path):
    with MjpegServer(grey_frames(100), fps=25) as server:
        run = InProcessRun(tmp_path, lambda handle: CaptureStage(server.url, handle), stop_after=90)
        run.wait_lines(10)
        old = run.capture_pid()
        os.kill(old, signal.SIGKILL)
        new = run.capture_pid(other_than=old)
        run.wait_lines(len(run.lines()) + 1)
        result = run.finish()
    assert result.exit_code == 0 and result.stop_reason == "window closed"
    assert result.summary["capture_restarts"] == 1
    lines = run.lines()
    assert_in_order(lines)  # indices go on from where the dead process stopped
    assert lines[-1]["frame"] == 89 and still_alive([old, new]) == []


@pytest.mark.parametrize("how", ["raise", "hold"])
def test_capture_failing_or_dying_with_the_ring_lock_is_restarted(tmp_path, how, caplog):
    caplog.set_level("WARNING", logger="app.pipeline.supervisor")
    with MjpegServer(grey_frames(100), fps=25) as server:
        run = InProcessRun(tmp_path, lambda handle: DyingCapture(server.url, handle, how), stop_after=40)
        result = run.finish()
    assert result.exit_code == 0 and result.stop_reason == "window closed", result.stop_reason
    assert result.summary["capture_restarts"] == 1
    assert_in_order(run.lines())
    expected = {
        "raise": "stage capture failed: RuntimeError: decoder went away; restarting it",
        "hold": "stage capture died unexpectedly (killed by SIGKILL); restarting it",
    }[how]
    assert expected in caplog.text
    if how == "hold":
        assert "a lock held by the dead stage was released" in caplog.text


def test_restarts_are_limited_then_the_run_stops_naming_the_stage(tmp_path):
    with MjpegServer(grey_frames(100), fps=25) as server:
        run = InProcessRun(
            tmp_path, lambda handle: CaptureStage(server.url, handle), stop_after=10_000, source_restarts=2
        )
        pid = None
        for _ in range(3):
            run.wait_lines(len(run.lines()) + 3)
            pid = run.capture_pid(other_than=pid)
            os.kill(pid, signal.SIGKILL)
        result = run.finish()
    assert result.exit_code == EXIT_FAILED
    assert result.stop_reason == (
        "stage capture died unexpectedly (killed by SIGKILL); "
        "not restarted again: 2 restarts in the last 60 s"
    )
    assert result.summary["capture_restarts"] == 2


# -- the real CLI --------------------------------------------------------------------------------------------


def live_cli(url: str, tmp_path: Path) -> tuple[RunningPipeline, Path]:
    tracks = tmp_path / "tracks.jsonl"
    argv = [
        "-m", "app.main", "--env-file", str(tmp_path / "none.env"), "--source", url, "--no-gui",
        "--gallery", str(tmp_path / "empty"), "--tracks-out", str(tracks), "--log-level", "INFO",
    ]  # fmt: skip
    run = RunningPipeline(argv)
    assert run.wait_for_stderr("pipeline running", timeout=120), run.stderr
    return run, tracks


def rows(tracks: Path) -> list[dict]:
    return [json.loads(line) for line in tracks.read_text().splitlines() if line.endswith("}")]


def wait_rows(run: RunningPipeline, tracks: Path, count: int) -> None:
    wait_until(lambda: tracks.exists() and len(rows(tracks)) >= count or run.proc.poll() is not None,
               f"{count} rows in the tracks file")  # fmt: skip
    assert run.proc.poll() is None, run.stderr


def lin_manuel_shot() -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(HAMILTON))
    frames = [cap.read()[1] for _ in range(211)]
    cap.release()
    return frames[86:]


@pytest.mark.slow
def test_cli_on_a_live_camera_survives_a_killed_capture(tmp_path):
    with MjpegServer(lin_manuel_shot(), fps=15) as server:
        run, tracks = live_cli(server.url, tmp_path)
        try:
            wait_rows(run, tracks, 10)
            old = run.stage_pid("capture")
            os.kill(old, signal.SIGKILL)
            count = len(rows(tracks))
            wait_rows(run, tracks, count + 5)  # frames with faces again after the kill
            stages = run.record_stages()
            assert old not in stages and "fp-capture" in stages.values()
            run.signal(signal.SIGINT)
            run.wait()
        finally:
            run.kill()
    assert run.proc.returncode == 130 and run.summary()["capture_restarts"] == 1
    assert "stage capture died unexpectedly (killed by SIGKILL); restarting it" in run.stderr
    assert still_alive([*stages, old]) == [] and shm_segments(run.proc.pid) == []
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_cli_on_a_live_camera_stops_cleanly_when_detection_dies(tmp_path):
    with MjpegServer(lin_manuel_shot(), fps=15) as server:
        run, tracks = live_cli(server.url, tmp_path)
        try:
            wait_rows(run, tracks, 5)
            os.kill(run.stage_pid("detect"), signal.SIGKILL)
            run.wait()
        finally:
            run.kill()
    assert run.proc.returncode == 1, run.stderr
    assert "stopped: stage detect died unexpectedly (killed by SIGKILL)" in run.stderr
    assert still_alive(list(run.stage_pids)) == [] and shm_segments(run.proc.pid) == []
