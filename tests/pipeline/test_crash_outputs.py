"""A real run killed with SIGKILL (the main process, or the stage that writes the outputs) leaves an annotated
video that plays up to the crash, and tracks that parse to their last line."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import av
import pytest

from tests.pipeline.process_checks import RunningPipeline, alive
from tests.support.shared_data import SHARED_FACES

pytestmark = pytest.mark.slow

HAMILTON = SHARED_FACES / "short_hamilton_clip.mp4"


def tracked_frames(tracks: Path) -> int:
    """Distinct frames in the tracks file (the sink writes a frame's tracks just before its video frame)."""
    if not tracks.exists():
        return 0
    lines = tracks.read_text().splitlines()
    complete = lines if tracks.read_text().endswith("\n") else lines[:-1]
    return len({json.loads(line)["frame"] for line in complete})


def decoded(path: Path) -> tuple[int, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.codec_context.name


@pytest.mark.parametrize("victim", ["main", "gui"])
def test_sigkill_leaves_a_playable_video_up_to_the_crash(tmp_path, victim):
    out, tracks = tmp_path / "out.mp4", tmp_path / "tracks.jsonl"
    run = RunningPipeline(
        ["-m", "app.main", "--env-file", str(tmp_path / "none.env"), "--source", str(HAMILTON), "--no-gui",
         "--gallery", str(tmp_path / "empty"), "--output", str(out), "--tracks-out", str(tracks)]
    )  # fmt: skip
    stages: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180  # failure guard only: the wait is on the tracks file
        while time.monotonic() < deadline and run.proc.poll() is None and tracked_frames(tracks) < 20:
            time.sleep(0.05)
        assert run.proc.poll() is None, run.stderr
        stages = run.record_stages()
        target = run.proc.pid if victim == "main" else run.stage_pid("gui")
        os.kill(target, signal.SIGKILL)
        if victim == "gui":
            run.wait(timeout=60)  # the supervisor stops the rest
        else:
            run.proc.wait(10)
            stop = time.monotonic() + 30  # orphaned stages notice their parent is gone
            while alive(stages) and time.monotonic() < stop:
                time.sleep(0.05)
    finally:
        run.kill()
        for pid in alive(stages):
            os.kill(pid, signal.SIGKILL)
    frames, codec = decoded(out)
    shown = tracked_frames(tracks)
    # shown >= 20: at most the frame being drawn and the one whose fragment was not yet closed are lost
    assert codec == "h264" and frames >= shown - 2, (frames, shown, run.stderr)
    if victim == "gui":
        assert run.proc.returncode == 1 and "stage gui died unexpectedly" in run.stderr
