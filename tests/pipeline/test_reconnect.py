"""Cameras that drop, stall and come back, with the real loopback servers (tests/support/servers.py).

- The backoff policy on its own (no jitter: exact schedules).
- The capture stage in this process: a stopped server gives placeholder frames that say "reconnecting",
  a restarted one gives frames again in a new segment, from the first attempt after its return (the
  backoff cap bounds how long that attempt is away); a frozen one is a stall, found by the read timeout;
  a camera back at another resolution is letterboxed into the ring.
- Recognition resets its tracks on a new segment, and the GUI draws the status.
- The whole CLI (`python -m app.main --source URL`) against an MJPEG and an RTSP server that stop, restart
  and freeze: it resumes, retries on the backoff schedule and never hangs.

Nothing here is timed: the tests wait for events (with generous timeouts that only a hang reaches) and
check attempt counts and the schedule the stage logs, so they hold on a loaded machine.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import load_settings
from app.pipeline.frame_ring import FrameRing, FrameRingHandle
from app.pipeline.messages import FrameMeta, FrameRef, SourceInfo, StageStamp, TrackedFaces
from app.pipeline.reconnect import SOURCE_BACKOFF, BackoffPolicy, RetrySchedule
from app.pipeline.stage_runner import NOTHING_YET
from app.stages.capture import CaptureStage
from app.stages.gui import GuiStage
from tests.pipeline.process_checks import REPO, RunningPipeline, shm_segments, still_alive
from tests.support.servers import MjpegServer, RtspServer, rtsp_support_problem
from tests.support.shared_data import HAMILTON
from tests.support.waiting import GUARD_S, guard, wait_until

DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
RTSP_PROBLEM = rtsp_support_problem()
needs_rtsp = pytest.mark.skipif(RTSP_PROBLEM is not None, reason=RTSP_PROBLEM or "")
FAST = BackoffPolicy(first_s=0.05, factor=2.0, cap_s=0.4, jitter=0.0)
BACK_AT = re.compile(r"back after [0-9.]+ s \(attempt (\d+)\)")


# -- the policy ---------------------------------------------------------------------------------------------


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    policy = BackoffPolicy(first_s=0.1, factor=2.0, cap_s=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 9)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert policy.delay(10_000) == 2.0  # no overflow, however long the outage


def test_jitter_only_ever_shortens_a_delay():
    policy = BackoffPolicy(first_s=0.1, factor=2.0, cap_s=1.0, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 400)]
    assert max(delays) <= 1.0 and min(delays[10:]) >= 0.8  # capped runs stay in [cap - 20 %, cap]
    assert len({round(d, 6) for d in delays[10:]}) > 100  # and are spread


@pytest.mark.parametrize(
    "bad", [dict(first_s=0), dict(cap_s=0.01), dict(factor=0.5), dict(jitter=1.0), dict(jitter=-0.1)]
)
def test_nonsense_policies_are_refused(bad):
    with pytest.raises(ValueError):
        BackoffPolicy(**{"first_s": 0.1, "cap_s": 1.0, **bad})


def test_retry_schedule_tries_at_once_then_backs_off():
    now = [100.0]
    schedule = RetrySchedule(BackoffPolicy(first_s=0.1, cap_s=0.3, jitter=0.0), clock=lambda: now[0])
    assert schedule.due() and schedule.wait_s() == 0.0
    assert schedule.failed() == pytest.approx(0.1) and not schedule.due()
    now[0] += 0.1
    assert schedule.due()
    assert [schedule.failed() for _ in range(3)] == pytest.approx([0.2, 0.3, 0.3])
    assert schedule.failures == 4 and schedule.wait_s() == pytest.approx(0.3)
    now[0] += 5
    assert schedule.elapsed_s() == pytest.approx(5.1)


# -- the capture stage in this process ----------------------------------------------------------------------


def grey_frames(count: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """Frame i is filled with grey level 4 * i + 20 (never black: tells real pixels from letterbox bars)."""
    return [np.full((size[1], size[0], 3), 20 + (4 * i) % 200, np.uint8) for i in range(count)]


@contextmanager
def ring_for(shape: tuple[int, ...], slots: int = 4) -> Iterator[tuple[FrameRing, FrameRingHandle]]:
    lock = multiprocessing.get_context("spawn").Lock()
    name = f"facering-{os.getpid()}-rc{time.monotonic_ns() % 10**9}"
    ring = FrameRing.create(name, slots, tuple(int(v) for v in shape), lock)
    handle = FrameRingHandle(name, lock)
    try:
        yield ring, handle
    finally:
        handle.close()
        ring.close()
        ring.unlink()


class Reader:
    """Drives a capture stage the way the stage runner does and consumes every frame at once."""

    def __init__(self, capture: CaptureStage, ring: FrameRing) -> None:
        self.capture = capture
        self.ring = ring
        self.got: list[tuple[float, FrameMeta, np.ndarray]] = []  # (time, meta, pixels)

    def until(self, done: Callable[[Reader], bool], timeout: float = GUARD_S) -> None:
        """Produce until `done(self)`. Fails (never hangs) after `timeout`, a failure guard."""
        with guard(timeout) as expired:
            self._until(done, expired, timeout)

    def _until(self, done: Callable[[Reader], bool], expired: threading.Event, timeout: float) -> None:
        while not done(self):
            if expired.is_set():
                pytest.fail(f"not done within the {timeout:.0f} s guard: {self.summary()}")
            msg = self.capture.produce()
            assert msg is not None, "a live source must not end"
            if msg is NOTHING_YET:
                continue
            meta = msg.meta
            assert self.ring.claim(meta.slot, meta.seq)
            self.got.append((time.monotonic(), meta, self.ring.frame(meta.slot).copy()))
            self.ring.release(meta.slot, meta.seq)

    def frames(self) -> list[FrameMeta]:
        return [meta for _, meta, _ in self.got if not meta.status]

    def placeholders(self) -> list[FrameMeta]:
        return [meta for _, meta, _ in self.got if meta.status]

    def placeholder_since(self, mark: int) -> bool:
        return any(meta.status for _, meta, _ in self.got[mark:])

    def last_is_frame(self) -> bool:
        return bool(self.got) and not self.got[-1][1].status

    def mark(self) -> int:
        return len(self.got)

    def summary(self) -> str:
        return ", ".join(f"{m.frame_index}{'*' if m.status else ''}" for _, m, _ in self.got[-20:])

    def failures(self) -> int:
        """Failed reconnect attempts so far in the current outage (the stage runs only inside `until`)."""
        outage = self.capture._outage
        assert outage is not None, "not reconnecting"
        return outage.failures


def back_at_attempt(log: str) -> list[int]:
    """The attempt numbers of the "back after ... (attempt N)" lines, in order."""
    return [int(n) for n in BACK_AT.findall(log)]


@contextmanager
def reading(url: str, **options) -> Iterator[Reader]:
    capture = CaptureStage(url, FrameRingHandle("unused", None), **options)
    info = capture.setup()
    with ring_for(info.frame_shape) as (ring, handle):
        capture.frames = handle
        try:
            yield Reader(capture, ring)
        finally:
            capture.close()


def test_capture_reconnects_when_the_server_comes_back(caplog):
    caplog.set_level(logging.DEBUG, logger="app")
    with MjpegServer(grey_frames(50), fps=50) as server:
        url = server.url.replace("http://", "http://cam:topsecret@")  # the server takes any credentials
        with reading(url, backoff=FAST, status_every_s=0.2) as reader:
            reader.until(lambda r: len(r.frames()) >= 5)
            server.stop()
            reader.until(lambda r: bool(r.placeholders()))
            reader.until(lambda r: len(r.placeholders()) >= 4)  # keeps saying so while down
            before = reader.mark()
            failed = reader.failures()
            server.start()
            reader.until(lambda r: r.last_is_frame())
            reader.until(lambda r: len(r.frames()) >= 15)
    # A cut connection fails the read at once: the loss is the cut, not a read timeout.
    assert "lost (connection lost or stream ended); reconnecting" in caplog.text
    # Attempts are due every <= 0.4 s (the cap, see the policy tests): the first one after the return
    # finds the server.
    assert back_at_attempt(caplog.text) == [failed + 1], caplog.text
    status = reader.placeholders()[0].status
    assert status.startswith("reconnecting to http://***@127.0.0.1:") and "topsecret" not in status
    seqs = [meta.seq for _, meta, _ in reader.got]
    assert seqs == sorted(set(seqs))  # sequence numbers never repeat: no stale message can claim a slot
    segments = [meta.segment for _, meta, _ in reader.got]
    assert segments[:before] == [0] * before and set(segments[before:]) == {1}
    frames = reader.frames()
    assert [m.frame_index for m in frames] == sorted(m.frame_index for m in frames)
    # The gap runs from the loss to the first frame back, so it spans every placeholder (one clock).
    placeholder_stamps = [m.stamps[0].end for m in reader.placeholders()]
    assert reader.capture.reconnects == 1
    assert reader.capture.gaps_s[0] >= placeholder_stamps[-1] - placeholder_stamps[0] > 0
    # The placeholder is the last frame dimmed; frames after the return are the source's again.
    last_real = next(p for _, m, p in reversed(reader.got[:before]) if not m.status)
    first_placeholder = next(p for _, m, p in reader.got if m.status)
    assert abs(float(first_placeholder.mean()) - 0.35 * float(last_real.mean())) < 2
    logged = caplog.text
    assert "lost (connection lost or stream ended); reconnecting" in logged and "back after" in logged
    assert "topsecret" not in logged and "cam:" not in logged


def test_a_frozen_stream_is_a_stall_found_by_the_read_timeout(caplog):
    caplog.set_level(logging.WARNING, logger="app")
    with (
        MjpegServer(grey_frames(50), fps=50) as server,
        reading(server.url, backoff=FAST, read_timeout_s=1.0, status_every_s=0.2) as reader,
    ):
        reader.until(lambda r: len(r.frames()) >= 5)
        assert not reader.placeholders()  # frames flowing: no false alarm
        server.freeze()
        reader.until(lambda r: bool(r.placeholders()))  # not a hang
        failed = reader.failures()
        server.unfreeze()
        reader.until(lambda r: r.last_is_frame())
    # Found by the read timeout (a read that took about all of it), not taken for a cut connection.
    assert re.search(r"lost \((no frame for|stalled: one frame in) [0-9.]+ s\); reconnecting", caplog.text)
    assert back_at_attempt(caplog.text) == [failed + 1], caplog.text  # the next attempt finds it again
    assert reader.capture.segment == 1


@needs_rtsp
def test_rtsp_capture_reconnects_after_a_restart_and_a_stall(caplog):
    caplog.set_level(logging.WARNING, logger="app")
    with (
        RtspServer(grey_frames(50, (320, 240)), fps=25) as server,
        reading(server.url, backoff=FAST, read_timeout_s=1.0, status_every_s=0.2) as reader,
    ):
        reader.until(lambda r: len(r.frames()) >= 5)
        server.stop()
        reader.until(lambda r: bool(r.placeholders()))
        failed = reader.failures()
        server.start()  # returns once the server listens again
        reader.until(lambda r: r.last_is_frame())
        reader.until(lambda r: len(r.frames()) >= 10)
        assert "lost (connection lost or stream ended); reconnecting" in caplog.text
        # The next attempt opens the new session (one more if its first frame is not decodable yet).
        assert back_at_attempt(caplog.text)[0] <= failed + 2, caplog.text
        server.freeze()
        # FFmpeg's RTSP reader returns buffered frames after each full read timeout before failing: the
        # first read that takes about the timeout counts as the stall, not the third.
        mark = reader.mark()
        reader.until(lambda r: r.placeholder_since(mark))
        server.unfreeze()  # a signal to the server process: it resumes when it gets there
        reader.until(lambda r: r.last_is_frame())
    assert re.search(r"lost \((no frame for|stalled: one frame in) [0-9.]+ s\); reconnecting", caplog.text)
    assert len(back_at_attempt(caplog.text)) == 2 and reader.capture.segment == 2


def test_a_camera_back_at_another_resolution_is_letterboxed_into_the_ring(caplog):
    caplog.set_level(logging.WARNING, logger="app")
    with (
        MjpegServer(grey_frames(20, (320, 240)), fps=50) as small,
        reading(small.url, backoff=FAST, status_every_s=0.2) as reader,
    ):
        reader.until(lambda r: len(r.frames()) >= 3)
        small.stop()
        reader.until(lambda r: bool(r.placeholders()))
        wide = MjpegServer(grey_frames(20, (640, 360)), fps=50)
        wide.port = small.port  # the camera comes back on its address with a 16:9 picture
        with wide:
            reader.until(lambda r: r.last_is_frame())
            reader.until(lambda r: len(r.frames()) >= 8)
    _, meta, pixels = reader.got[-1]
    assert (meta.width, meta.height) == (320, 240) and pixels.shape == (240, 320, 3)
    # 640x360 scaled by 0.5 is 320x180, centred: 30 black rows above and below, picture in between.
    assert pixels[:28].max() == 0 and pixels[212:].max() == 0
    assert pixels[32:208].min() >= 15
    assert "now sends 640x360 frames; letterboxing them into 320x240" in caplog.text


def test_gui_overlay_says_why_the_picture_is_stale():
    meta = FrameMeta(0, 1, 5, 0.2, 320, 240, [StageStamp("capture", 0.0, 0.0)], segment=1,
                     status="reconnecting to rtsp://***@cam/live (lost 3 s ago, attempt 4)")  # fmt: skip
    gui = GuiStage(FrameRingHandle("unused", None), show_window=False)
    lines = gui._overlay_lines(TrackedFaces.empty(meta))
    assert "reconnecting to rtsp://***@cam/live (lost 3 s ago, attempt 4)" in lines
    meta.status = ""
    faces = TrackedFaces.empty(meta)
    faces.gallery_unavailable = True
    lines = gui._overlay_lines(faces)
    assert not any("reconnecting" in line for line in lines)
    assert "gallery unavailable: no new names, retrying" in lines


# -- recognition after a gap ---------------------------------------------------------------------------------


def clip(start: int, stop: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(HAMILTON))
    frames = [cap.read()[1] for _ in range(stop)]
    cap.release()
    return frames[start:]


def test_recognition_resets_tracks_on_a_new_segment_and_skips_placeholders(tmp_path):
    from app.stages.detect import DetectStage
    from app.stages.postprocess import PostprocessStage
    from app.stages.recognize import RecognizeStage

    settings = load_settings({"qdrant_path": str(tmp_path / "empty")}, env_file=None)
    frames = clip(100, 130)  # one face, large and frontal: one track while the segment lasts
    out: list[TrackedFaces] = []
    with ring_for(frames[0].shape) as (ring, handle):
        stages = [DetectStage(handle, DETECTOR), PostprocessStage(0.1, 0.4), RecognizeStage(handle, settings)]
        for stage in stages:
            stage.setup()
        stages[2].start({0: SourceInfo(frame_shape=frames[0].shape, fps=29.97, live=False, source="test")})
        try:
            for i, image in enumerate(frames):
                segment = 0 if i < 15 else 1  # a reconnect between frames 14 and 15
                status = "reconnecting to http://cam/video" if i == 15 else ""
                slot = ring.acquire(live=False, timeout=1.0)
                ring.frame(slot)[:] = image
                ring.publish(slot, i + 1)
                meta = FrameMeta(slot, i + 1, i, i / 30, 640, 360, [StageStamp("capture", 0.0, 0.0)],
                                 segment=segment, status=status)  # fmt: skip
                [raw] = stages[0].process(FrameRef(meta))
                [found] = stages[1].process(raw)
                [tracked] = stages[2].process(found)
                out.append(tracked)
                ring.release(slot, i + 1)
        finally:
            for stage in stages:
                stage.close()
    before = {int(t) for r in out[:15] for t in r.track_ids}
    after = {int(t) for r in out[16:] for t in r.track_ids}
    assert len(out[15]) == 0  # the placeholder: the same face is in its pixels, but nothing is tracked
    assert len(before) == 1 and len(after) == 1 and min(after) > max(before)  # a new track, a new id
    assert out[16].statuses == [] or out[-1].statuses[0] in ("pending", "unknown")


# -- the whole CLI against real servers ----------------------------------------------------------------------


def lin_manuel_shot() -> list[np.ndarray]:
    return clip(86, 211)  # a face on every frame: the tracks file shows every processed frame


class LiveRun:
    """`python -m app.main --source URL --no-gui --tracks-out ...` in a child process."""

    def __init__(self, url: str, tmp_path: Path, *extra: str) -> None:
        self.tracks = tmp_path / "tracks.jsonl"
        argv = [
            "-m", "app.main", "--env-file", str(tmp_path / "none.env"), "--source", url, "--no-gui",
            "--gallery", str(tmp_path / "empty"), "--tracks-out", str(self.tracks), "--log-level", "INFO",
            *extra,
        ]  # fmt: skip
        self.run = RunningPipeline(argv)
        assert self.run.wait_for_stderr("pipeline running", timeout=120), self.run.stderr

    def rows(self) -> list[dict]:
        if not self.tracks.exists():
            return []
        return [json.loads(line) for line in self.tracks.read_text().splitlines() if line.endswith("}")]

    def running(self) -> bool:
        assert self.run.proc.poll() is None, self.run.stderr
        return True

    def wait_rows(self, count: int) -> None:
        wait_until(lambda: self.running() and len(self.rows()) >= count, f"{count} tracked faces")

    def wait_new_track(self) -> None:
        """Until the sink writes a face of a track newer than every track so far (after a gap the tracker
        restarts, and ids continue)."""
        known = max((r["track"] for r in self.rows()), default=0)
        wait_until(lambda: self.running() and any(r["track"] > known for r in self.rows()), "a new track")

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.run.stderr_lines if text in line]

    def wait_log(self, text: str, count: int) -> list[str]:
        """The first `count` stderr lines containing `text`, once there are that many."""
        wait_until(lambda: self.running() and len(self.log_lines(text)) >= count, f"{count}x {text!r}")
        return self.log_lines(text)[:count]

    def stop(self) -> dict:
        self.run.signal(signal.SIGINT)
        self.run.wait()
        assert self.run.proc.returncode == 130, self.run.stderr
        pids = list(self.run.stage_pids)
        assert still_alive(pids) == [] and shm_segments(self.run.proc.pid) == []
        assert "Traceback" not in self.run.stderr
        return self.run.summary()

    def close(self) -> None:
        self.run.kill()


def drop_and_return(server, tmp_path: Path) -> None:
    """Server stops for a while, comes back; then freezes (a stall), comes back."""
    live = LiveRun(server.url, tmp_path)
    try:
        live.run.record_stages()
        live.wait_rows(10)
        server.stop()
        [lost] = live.wait_log("reconnecting", 1)
        time.sleep(1.5)  # the outage itself (capture keeps trying); nothing is asserted about its length
        server.start()
        live.wait_new_track()
        live.wait_rows(len(live.rows()) + 10)
        server.freeze()
        stalled = live.wait_log("reconnecting", 2)[1]
        time.sleep(1.0)  # the stall itself
        server.unfreeze()
        live.wait_new_track()
        live.wait_rows(len(live.rows()) + 5)
        summary = live.stop()
    finally:
        live.close()
    assert "lost (connection lost or stream ended)" in lost, lost  # a cut: the read fails at once
    assert re.search(r"lost \((no frame for|stalled: one frame in) [0-9.]+ s\)", stalled), stalled
    assert len(live.log_lines("back after")) == 2, live.run.stderr
    assert summary["frames"] > 20 and summary["capture_restarts"] == 0


@pytest.mark.slow
def test_cli_resumes_after_an_mjpeg_camera_drops_and_stalls(tmp_path):
    with MjpegServer(lin_manuel_shot(), fps=15) as server:
        drop_and_return(server, tmp_path)


@pytest.mark.slow
@needs_rtsp
def test_cli_resumes_after_an_rtsp_camera_drops_and_stalls(tmp_path):
    with RtspServer(lin_manuel_shot(), fps=15) as server:
        drop_and_return(server, tmp_path)


@pytest.mark.slow
def test_cli_waits_for_a_camera_that_stays_away_and_stops_at_once(tmp_path):
    """Down for longer than the whole backoff: attempts stay at the cap, Ctrl-C still ends the run."""
    with MjpegServer(lin_manuel_shot(), fps=15) as server:
        url = server.url.replace("http://", "http://admin:hunter2@")
        live = LiveRun(url, tmp_path, "--log-level", "DEBUG")
        try:
            live.run.record_stages()
            live.wait_rows(5)
            server.stop()
            attempts = live.wait_log("reconnect attempt", 10)
            summary = live.stop()
        finally:
            live.close()
    # Each failed attempt logs the delay it books: 0.1, 0.2, 0.4 s, then the 0.5 s cap, each shortened by
    # the jitter (up to 20 %), never lengthened. The delays are the policy's, not measured: exact.
    booked = [re.search(r"reconnect attempt (\d+) .*next in ([0-9.]+) s", line) for line in attempts]
    assert all(booked), attempts
    policy = SOURCE_BACKOFF
    for match in booked:
        number, delay = int(match[1]), float(match[2])
        full = policy.delay(number)
        assert full * (1 - policy.jitter) - 0.005 <= delay <= full + 0.005, (number, delay)
    assert [int(m[1]) for m in booked] == list(range(1, 11))
    assert policy.delay(10) == policy.cap_s  # the last ones were at the cap
    assert summary["stop_reason"] == "interrupted (Ctrl-C)"
    assert "hunter2" not in live.run.stderr and "admin" not in live.run.stderr
