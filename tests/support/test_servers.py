"""The loopback camera servers behave like real cameras for cv2's FFmpeg reader: they serve the source frames
at the requested rate, a stop cuts readers off at once, a freeze makes reads time out (never hang), and a
restart on the same url is readable again by a fresh VideoCapture."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.servers import MjpegServer, RtspServer, load_jpeg_frames, rtsp_support_problem
from tests.support.shared_data import HAMILTON as HAMILTON_CLIP
from tests.support.waiting import guard

REPO = Path(__file__).resolve().parents[2]

FPS = 25.0
WIDTH, HEIGHT = 640, 360
INDEX_BAND_ROWS = 40  # top band: black with one white 12 px block at x = 12 * frame index
INDEX_BLOCK_PX = 12
OPEN_TIMEOUT_MS = 2000
READ_TIMEOUT_MS = 2000
# Where a test tells "failed at once" (a cut, a refusal) from "failed by a timeout", the timeout is this long:
# a failure before it can only be the cut, however slow the machine, and nothing is timed.
PATIENT_MS = 60_000
CUT_GUARD_S = 30.0  # seconds a patient reader is given to see a cut (a failure guard)
# TCP so the test does not depend on UDP; probesize 32 opens in ~0.1 s instead of ~27 frames of probing.
RTSP_CAPTURE_OPTIONS = "rtsp_transport;tcp|probesize;32"

RTSP_PROBLEM = rtsp_support_problem()
needs_rtsp = pytest.mark.skipif(RTSP_PROBLEM is not None, reason=RTSP_PROBLEM or "")


def make_frame(index: int) -> np.ndarray:
    """A 640x360 frame whose index can be read back through lossy codecs, plus moving shapes."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frame[INDEX_BAND_ROWS:] = (60, 90, 40)
    x = INDEX_BLOCK_PX * index
    frame[:INDEX_BAND_ROWS, x : x + INDEX_BLOCK_PX] = 255
    cv2.circle(frame, (80 + 10 * index, 200), 40, (0, 0, 255), -1)
    cv2.rectangle(
        frame, (500 - 6 * index, 100 + 3 * index), (580 - 6 * index, 160 + 3 * index), (255, 200, 0), -1
    )
    return frame


def frame_index(frame: np.ndarray) -> int:
    band = frame[5 : INDEX_BAND_ROWS - 5].astype(np.float32).mean(axis=(0, 2))
    return int(np.argmax(np.convolve(band, np.ones(INDEX_BLOCK_PX), mode="valid")) + INDEX_BLOCK_PX // 2) // (
        INDEX_BLOCK_PX
    )


def assert_source_frames(frames: list[np.ndarray], source: list[np.ndarray]) -> list[int]:
    """Every frame is a faithful copy of a source frame, and they come in order, looping."""
    indices = [frame_index(f) for f in frames]
    for frame, index in zip(frames, indices, strict=True):
        assert frame.shape == (HEIGHT, WIDTH, 3)
        diff = np.abs(frame.astype(np.int16) - source[index].astype(np.int16)).mean()
        assert diff < 6.0, f"frame {index} differs from the source by {diff:.1f} grey levels on average"
    steps = {(b - a) % len(source) for a, b in zip(indices, indices[1:], strict=False)}
    assert steps == {1}, f"frames out of order: {indices}"
    return indices


def open_capture(
    url: str, read_timeout_ms: int = READ_TIMEOUT_MS, open_timeout_ms: int = OPEN_TIMEOUT_MS
) -> cv2.VideoCapture:
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        open_timeout_ms,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        read_timeout_ms,
    ]
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def read_frames(cap: cv2.VideoCapture, count: int) -> list[np.ndarray]:
    frames = []
    for _ in range(count):
        ok, frame = cap.read()
        assert ok, f"read failed after {len(frames)} frames"
        frames.append(frame)
    return frames


def read_until_fails(cap: cv2.VideoCapture, limit_s: float) -> int:
    """Read until read() returns False; the frames read before. Fails the test if the `limit_s` guard fires
    first (a hang, not a measurement)."""
    count = 0
    with guard(limit_s) as expired:
        while cap.read()[0]:
            count += 1
            if expired.is_set():
                pytest.fail(f"reads still succeed {limit_s:.0f} s after the server went away")
    return count


def port_refuses(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}  # a zombie has exited; its reaper just has not collected it


@pytest.fixture(scope="module")
def source_frames() -> list[np.ndarray]:
    return [make_frame(i) for i in range(50)]  # 2 s at 25 fps


@pytest.fixture(scope="module")
def source_clip(tmp_path_factory: pytest.TempPathFactory, source_frames: list[np.ndarray]) -> Path:
    # mp4v is MPEG-4 Part 2: the RTSP server must not depend on the file's codec.
    path = tmp_path_factory.mktemp("clip") / "shapes.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for frame in source_frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def mjpeg_server(source_frames: list[np.ndarray]) -> Iterator[MjpegServer]:
    with MjpegServer(source_frames, fps=FPS) as server:
        yield server


@pytest.fixture
def rtsp_server(source_clip: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RtspServer]:
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", RTSP_CAPTURE_OPTIONS)
    with RtspServer(source_clip, fps=FPS) as server:
        yield server


def test_load_jpeg_frames_decodes_a_real_h264_clip() -> None:
    frames = load_jpeg_frames(HAMILTON_CLIP)
    assert len(frames) == 275
    first = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (360, 640, 3)


def test_mjpeg_stream_is_multipart_jpeg(mjpeg_server: MjpegServer) -> None:
    with socket.create_connection(("127.0.0.1", mjpeg_server.port), timeout=5) as conn:
        conn.sendall(b"GET /video.mjpg HTTP/1.1\r\nHost: camera\r\n\r\n")
        data = b""
        while data.count(b"--frame") < 2 and len(data) < 1_000_000:
            data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"Content-Type: multipart/x-mixed-replace; boundary=frame" in head
    part_head, _, part_body = body.partition(b"\r\n\r\n")
    assert part_head.startswith(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ")
    length = int(part_head.rsplit(b" ", 1)[1])
    jpeg = np.frombuffer(part_body[:length], np.uint8)
    assert frame_index(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)) == 0
    with socket.create_connection(("127.0.0.1", mjpeg_server.port), timeout=5) as conn:
        conn.sendall(b"GET /other HTTP/1.1\r\nHost: camera\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.0 404")


def test_mjpeg_serves_source_frames_at_fps_looping(mjpeg_server: MjpegServer, source_frames: list) -> None:
    cap = open_capture(mjpeg_server.url)
    assert cap.isOpened()
    frames = read_frames(cap, 60)
    # Every source frame once a loop, in order (the server's own schedule, one frame per 1/fps, sets the
    # rate; the reader's clock is not asserted on).
    indices = assert_source_frames(frames, source_frames)
    assert indices[0] == 0 and indices[-1] == 9, (
        "60 frames of a 50-frame source end at index 9 after one loop"
    )
    cap.release()


def test_mjpeg_stop_cuts_readers_and_restart_serves_same_url(
    mjpeg_server: MjpegServer, source_frames
) -> None:
    url, port = mjpeg_server.url, mjpeg_server.port
    cap = open_capture(url, read_timeout_ms=PATIENT_MS)
    read_frames(cap, 5)
    assert mjpeg_server.client_count == 1

    mjpeg_server.stop()
    # A dropped connection fails the read at once: this reader's timeout is far beyond the guard.
    read_until_fails(cap, limit_s=CUT_GUARD_S)
    assert port_refuses(port)
    assert not open_capture(url, open_timeout_ms=PATIENT_MS).isOpened()  # refused, not timed out

    mjpeg_server.start()
    assert mjpeg_server.url == url
    cap = open_capture(url)
    assert_source_frames(read_frames(cap, 10), source_frames)  # readable again on the same url
    cap.release()


def test_mjpeg_freeze_times_out_reads_then_reconnect_works(mjpeg_server: MjpegServer, source_frames) -> None:
    cap = open_capture(mjpeg_server.url, read_timeout_ms=1000)
    read_frames(cap, 5)
    mjpeg_server.freeze()
    read_until_fails(cap, limit_s=CUT_GUARD_S)  # a silent stream fails by the read timeout: never hangs
    mjpeg_server.unfreeze()
    cap = open_capture(mjpeg_server.url)
    assert_source_frames(read_frames(cap, 5), source_frames)
    cap.release()


def test_mjpeg_restart_helper_and_context_exit_free_the_port(source_frames: list[np.ndarray]) -> None:
    with MjpegServer(source_frames[:5], fps=50) as server:
        cap = open_capture(server.url, read_timeout_ms=PATIENT_MS)
        read_frames(cap, 2)
        server.restart()
        read_until_fails(cap, limit_s=CUT_GUARD_S)  # the restart cut the reader
        assert len(read_frames(open_capture(server.url), 3)) == 3
        port = server.port
    assert port_refuses(port)


@needs_rtsp
def test_rtsp_serves_source_frames_looping(rtsp_server: RtspServer, source_frames: list) -> None:
    cap = open_capture(rtsp_server.url)
    assert cap.isOpened()
    frames = read_frames(cap, 60)
    indices = assert_source_frames(frames, source_frames)
    assert indices[0] == 0 and indices[-1] == 9
    cap.release()


@needs_rtsp
def test_rtsp_stop_cuts_readers_and_restart_serves_same_url(rtsp_server: RtspServer, source_frames) -> None:
    url, port, pid = rtsp_server.url, rtsp_server.port, rtsp_server.pid
    cap = open_capture(url, read_timeout_ms=PATIENT_MS)
    read_frames(cap, 5)

    rtsp_server.stop()
    assert pid is not None and process_gone(pid)
    # A dropped connection fails the read at once: this reader's timeout is far beyond the guard.
    read_until_fails(cap, limit_s=CUT_GUARD_S)
    assert port_refuses(port)
    assert not open_capture(url, open_timeout_ms=PATIENT_MS).isOpened()  # refused, not timed out

    rtsp_server.start()
    assert rtsp_server.url == url and rtsp_server.pid != pid
    cap = open_capture(url)
    assert_source_frames(read_frames(cap, 10), source_frames)  # a restarted camera is readable again
    cap.release()


@needs_rtsp
def test_rtsp_freeze_times_out_reads_then_reconnect_works(rtsp_server: RtspServer, source_frames) -> None:
    timeout_s = 1.0
    cap = open_capture(rtsp_server.url, read_timeout_ms=int(timeout_s * 1000))
    read_frames(cap, 5)
    rtsp_server.freeze()
    # FFmpeg's RTSP reader hands out the frames in flight and decoder-delayed ones, each after a full read
    # timeout, before read() returns False: it fails, never hangs.
    read_until_fails(cap, limit_s=CUT_GUARD_S)
    rtsp_server.unfreeze()
    cap = open_capture(rtsp_server.url)
    assert_source_frames(read_frames(cap, 5), source_frames)
    cap.release()


@pytest.mark.parametrize("server_kind", ["mjpeg", pytest.param("rtsp", marks=needs_rtsp)])
def test_short_stall_resumes_same_connection_at_fps(
    server_kind: str, source_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stall shorter than the read timeout: the open reader just waits, then frames continue in order and
    # at the source rate (no burst of "late" frames after the pause).
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", RTSP_CAPTURE_OPTIONS)
    server_type = MjpegServer if server_kind == "mjpeg" else RtspServer
    with server_type(source_frames, fps=FPS) as server:
        cap = open_capture(server.url)
        before = read_frames(cap, 10)
        server.freeze()
        unfrozen = threading.Event()

        def unfreeze() -> None:
            server.unfreeze()
            unfrozen.set()

        timer = threading.Timer(0.8, unfreeze)
        timer.start()
        try:
            after = read_frames(cap, 12)  # ~0.5 s of video: it cannot all come before the 0.8 s stall ends
            resumed_after_unfreeze = unfrozen.is_set()
            after += read_frames(cap, 25)
        finally:
            timer.cancel()
        # The same connection went on in source order after the stall, nothing skipped or repeated.
        assert_source_frames(before + after, source_frames)
        assert resumed_after_unfreeze, "12 frames came through while the server was frozen"
        cap.release()


@needs_rtsp
def test_rtsp_child_dies_with_its_parent(tmp_path: Path) -> None:
    # A test process killed outright (no cleanup code runs) must not leave the RTSP child behind.
    script = (
        "import sys, time, numpy as np\n"
        "from tests.support.servers import RtspServer\n"
        "server = RtspServer([np.zeros((64, 64, 3), np.uint8)], fps=5).start()\n"
        "print(server.pid, server.port, flush=True)\n"
        "time.sleep(60)\n"
    )
    # TMPDIR: the killed parent cannot remove its frames folder, so keep it inside pytest's tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        child_pid, port = (int(v) for v in line.split())
        assert not process_gone(child_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
    # The leader thread turns zombie a moment before the last thread closes the sockets: wait for both.
    deadline = time.monotonic() + 60.0  # a failure guard
    while not (process_gone(child_pid) and port_refuses(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(child_pid), "the RTSP server outlived its parent"
    assert port_refuses(port), "the RTSP server's port is still open after its parent died"


@needs_rtsp
def test_rtsp_close_reaps_the_child(source_frames: list[np.ndarray]) -> None:
    server = RtspServer(source_frames[:3], fps=10)
    with server:
        pid, port = server.pid, server.port
        assert pid is not None and not process_gone(pid)
    assert process_gone(pid) and port_refuses(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
