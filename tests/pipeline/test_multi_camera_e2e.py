"""Several cameras through the real CLI with real models: a camera's results do not depend on the others,
and a live camera that drops, or whose capture process dies, recovers alone while the others run on."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_pipeline_e2e import cli, enroll, run_to_end

from tests.pipeline.process_checks import RunningPipeline, alive, children_of, shm_segments
from tests.support.servers import MjpegServer, RtspServer, rtsp_support_problem
from tests.support.shared_data import HAMILTON, SHARED_FACES
from tests.support.waiting import wait_until

LIN, ALEX = "Lin-Manuel Miranda", "Alex Lacamoire"
LIN_SHOT = (82, 211)  # frames of the Hamilton clip where Lin-Manuel is large and frontal
# Three cameras at 8 FPS stay within what the 2-core test machine runs end to end (~35 FPS), so "every frame
# kept" is what the other cameras must show while one is away, not what the machine can afford.
LIVE_FPS = 8.0

pytestmark = pytest.mark.slow


def read_frames(start: int, stop: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(HAMILTON))
    frames = [cap.read()[1] for _ in range(stop)]
    cap.release()
    return frames[start:]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery") / "gallery"
    enroll(folder, LIN, SHARED_FACES / "lin-manuel-miranda.png")
    enroll(folder, ALEX, SHARED_FACES / "alex-lacamoire.png")
    return folder


def tracks_by_camera(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.endswith("}"):
            row = json.loads(line)
            out.setdefault(row["camera"], []).append(row)
    return out


def first_named(rows: list[dict]) -> dict[int, tuple[str, int]]:
    """track -> (name, first frame it is shown with that name), for every (track, name) pair."""
    out: dict[tuple[int, str], int] = {}
    for row in rows:
        if row["name"] is not None:
            out.setdefault((row["track"], row["name"]), row["frame"])
    return out  # type: ignore[return-value]


def test_three_cameras_on_files_track_each_camera_as_it_would_alone(gallery, tmp_path):
    # Three different files: the whole clip, Lin-Manuel's shot mirrored, the first shots at a smaller size.
    clips = {
        "hall": HAMILTON,
        "mirror": write_video(tmp_path / "mirror.mp4", [f[:, ::-1].copy() for f in read_frames(*LIN_SHOT)]),
        "small": write_video(
            tmp_path / "small.mp4", [cv2.resize(f, (480, 270)) for f in read_frames(60, 200)]
        ),
    }
    together = tmp_path / "together.jsonl"
    sources = [arg for name, path in clips.items() for arg in ("--source", f"{name}={path}")]
    _, summary = run_to_end(
        *sources, "--no-gui", "--max-speed", "--gallery", str(gallery), "--tracks-out", str(together),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert summary["stop_reason"] == "end of stream" and summary["dropped"] == 0
    assert {name: c["frames"] for name, c in summary["cameras"].items()} == {"hall": 275, "mirror": 129,
                                                                             "small": 140}  # fmt: skip
    rows = tracks_by_camera(together)
    for name, path in clips.items():
        alone_path = tmp_path / f"{name}.jsonl"
        run_to_end("--source", str(path), "--no-gui", "--max-speed", "--gallery", str(gallery),
                   "--tracks-out", str(alone_path), tmp_path=tmp_path)  # fmt: skip
        alone = tracks_by_camera(alone_path)["default"]
        mine = rows[name]
        # The same faces with the same track ids on every frame...
        assert [(r["frame"], r["track"]) for r in mine] == [(r["frame"], r["track"]) for r in alone], name
        # ...in the same place (batches of other cameras' frames change the arithmetic by rounding only)...
        assert (
            max(np.abs(np.subtract(r["box"], a["box"])).max() for r, a in zip(mine, alone, strict=True)) < 1.0
        )
        # ...with the same names, each given within 3 frames of where it is given alone.
        named, named_alone = first_named(mine), first_named(alone)
        assert set(named) == set(named_alone), name
        assert all(abs(named[key] - named_alone[key]) <= 3 for key in named), name
    assert any(key[1] == LIN for key in first_named(rows["mirror"]))  # the comparison is not vacuous


def capture_pids(run: RunningPipeline) -> dict[str, int]:
    return {comm: pid for pid, comm in children_of(run.proc.pid).items() if comm.startswith("fp-capture")}


def test_file_mjpeg_and_rtsp_cameras_are_named_and_recover_on_their_own(gallery, tmp_path):
    lin = read_frames(*LIN_SHOT)
    video = write_video(tmp_path / "lin.mp4", lin * 3, fps=LIVE_FPS)  # ~48 s: running for the whole test
    mjpeg = MjpegServer(lin, fps=LIVE_FPS).start()
    # CI has GStreamer's RTSP server; a machine without it serves the third camera as MJPEG too.
    rtsp_problem = rtsp_support_problem()
    third = (
        RtspServer(lin, fps=LIVE_FPS) if rtsp_problem is None else MjpegServer(lin, fps=LIVE_FPS)
    ).start()
    third_name = "rtsp" if rtsp_problem is None else "mjpg2"
    tracks = tmp_path / "tracks.jsonl"
    argv = cli(
        "--source", f"file={video}", "--source", f"mjpg={mjpeg.url}", "--source", f"{third_name}={third.url}",
        "--no-gui", "--gallery", str(gallery), "--tracks-out", str(tracks), "--log-level", "INFO",
        env_file=tmp_path / "none.env",
    )  # fmt: skip
    run = RunningPipeline(argv)
    try:
        assert run.wait_for_stderr("pipeline running", timeout=180), run.stderr
        cameras = ("file", "mjpg", third_name)

        def named(camera: str, after: int = -1) -> bool:
            rows = tracks_by_camera(tracks).get(camera, []) if tracks.exists() else []
            return any(r["name"] == LIN and r["frame"] > after for r in rows)

        for camera in cameras:
            wait_until(lambda c=camera: named(c), f"{camera} to name Lin-Manuel")
        assert not any(
            r["name"] not in (None, LIN) for rows in tracks_by_camera(tracks).values() for r in rows
        )

        # The MJPEG camera goes away for 3 s: the others go on. The file camera loses no frame (file frames
        # wait for room); a live camera may drop frames on a loaded machine (newest wins), never stall.
        def last_frame(camera: str) -> int:
            return max((r["frame"] for r in tracks_by_camera(tracks).get(camera, [])), default=-1)

        marks = {c: last_frame(c) for c in cameras}
        mjpeg.stop()
        assert run.wait_for_stderr("lost", timeout=20), run.stderr
        time.sleep(3.0)  # the outage itself; nothing is asserted about how long anything took
        for camera in ("file", third_name):
            during = [r["frame"] for r in tracks_by_camera(tracks)[camera] if r["frame"] > marks[camera]]
            assert during, f"{camera} stalled while the MJPEG camera was away"
            span = max(during) - marks[camera]
            if camera == "file":
                assert len(set(during)) >= 0.9 * span, f"{camera} lost frames: {len(set(during))} of {span}"
        back_from = last_frame("mjpg")
        mjpeg.start()
        wait_until(lambda: last_frame("mjpg") > back_from, "the MJPEG camera to come back by itself")
        wait_until(lambda: named("mjpg", back_from), "the MJPEG camera to name Lin-Manuel again")

        # kill -9 of one camera's capture: that camera alone is restarted.
        before = capture_pids(run)
        victim = f"fp-capture:{third_name}"[:15]
        assert set(before) == {"fp-capture:file", "fp-capture:mjpg", victim}, before
        resumed_from = last_frame(third_name)
        os.kill(before[victim], signal.SIGKILL)
        wait_until(lambda: capture_pids(run).get(victim) not in (None, before[victim]), "the restart")
        after = capture_pids(run)
        assert {c: p for c, p in after.items() if c != victim} == {
            c: p for c, p in before.items() if c != victim
        }
        wait_until(lambda: last_frame(third_name) > resumed_from, f"{third_name} to resume")
        run.record_stages()
    finally:
        run.signal(signal.SIGINT)
        try:
            run.wait()
        finally:
            run.kill()
            mjpeg.close()
            third.close()
    assert run.proc.returncode == 130, run.stderr
    summary = run.summary()
    assert set(summary["cameras"]) == {"file", "mjpg", third_name} and summary["capture_restarts"] == 1
    wait_until(lambda: not alive(run.stage_pids), "every stage process to exit")
    assert shm_segments(run.proc.pid) == []
