"""Start/stop/restart controllers for loopback video servers, for the pipeline's reliability tests.

    with MjpegServer(video_path, fps=25) as server:   # or RtspServer(...)
        cap = cv2.VideoCapture(server.url, cv2.CAP_FFMPEG)
        server.stop()      # camera dies: every connection is cut at once, new connections are refused
        server.start()     # camera is back on the SAME port and url
        server.freeze()    # camera stalls: connections stay open but no frames come (reads must time out)
        server.unfreeze()

`source` is a video file (any codec cv2 can decode) or a sequence of BGR uint8 frames of one size; it is
decoded once (up to `max_frames`) and served in a loop. Both servers listen on 127.0.0.1 only. Every wait is
bounded, and the RTSP server subprocess is killed on stop(), on garbage collection, at interpreter exit, and
by itself when its parent dies.

The RTSP server runs under Debian's /usr/bin/python3 (GStreamer's `gi` bindings), see `rtsp_server.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Self

import cv2
import numpy as np

from .mjpeg_server import STREAM_PATH, MjpegHttpServer

logger = logging.getLogger(__name__)

SYSTEM_PYTHON = Path("/usr/bin/python3")
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
RTSP_APT_PACKAGES = (
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
)
DEFAULT_MAX_FRAMES = 300  # ~12 s at 25 fps: enough to loop visibly, small enough to hold as JPEG in memory
JPEG_QUALITY = 85
RTSP_READY_TIMEOUT_S = 30.0  # a cold GStreamer plugin registry scan on a fresh CI box can take a while
RTSP_STOP_TIMEOUT_S = 3.0

VideoSource = str | os.PathLike[str] | Sequence[np.ndarray]


class ServerError(RuntimeError):
    """A test video server failed to start (message says why and what to install)."""


def load_jpeg_frames(source: VideoSource, max_frames: int = DEFAULT_MAX_FRAMES) -> list[bytes]:
    """Decode `source` (video path or BGR frames) and JPEG-encode up to `max_frames` frames."""
    frames: list[bytes] = []
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ServerError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
        try:
            while len(frames) < max_frames:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(_encode_jpeg(frame))
        finally:
            cap.release()
        if not frames:
            raise ServerError(f"no frames could be decoded from {path}")
    else:
        frames = [_encode_jpeg(frame) for frame in list(source)[:max_frames]]
        if not frames:
            raise ServerError("the frame list is empty")
    return frames


def _encode_jpeg(frame: np.ndarray) -> bytes:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ServerError(f"frames must be BGR uint8 (H,W,3), got {frame.dtype} {frame.shape}")
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ServerError(f"cv2 could not JPEG-encode a frame of shape {frame.shape}")
    return encoded.tobytes()


class _VideoServer:
    """Start/stop/restart/context-manager behaviour; subclasses implement _start, _stop, freeze, unfreeze."""

    scheme = ""

    def __init__(self, source: VideoSource, fps: float = 25.0, max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.frames = load_jpeg_frames(source, max_frames)
        self.port = 0  # 0 until the first start(); then fixed for every restart
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self.port == 0:
            raise RuntimeError(f"{type(self).__name__} has no url before start()")
        return f"{self.scheme}://127.0.0.1:{self.port}{self.path}"

    @property
    def path(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        """Listen (again) on the same port; no-op when running."""
        with self._lock:
            if not self.running:
                self._start()
        return self

    def stop(self) -> None:
        """Drop every client at once and stop listening (a camera losing power); no-op when stopped."""
        with self._lock:
            if self.running:
                self._stop()

    def restart(self, downtime_s: float = 0.0) -> None:
        """stop(), stay down for `downtime_s`, start() on the same port."""
        self.stop()
        if downtime_s > 0:
            time.sleep(downtime_s)
        self.start()

    def freeze(self) -> None:
        """Keep connections open but send no more frames (a stalled camera); reads must time out."""
        raise NotImplementedError

    def unfreeze(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


class MjpegServer(_VideoServer):
    """HTTP MJPEG camera at http://127.0.0.1:PORT/video.mjpg, served from threads of this process."""

    scheme = "http"

    def __init__(self, source: VideoSource, fps: float = 25.0, max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        super().__init__(source, fps, max_frames)
        self._server: MjpegHttpServer | None = None
        # Through a box, not self, so a forgotten server still closes when its controller is collected.
        self._server_box: list[MjpegHttpServer | None] = [None]
        self._finalizer = weakref.finalize(self, MjpegServer._cleanup, self._server_box)

    @property
    def path(self) -> str:
        return STREAM_PATH

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def client_count(self) -> int:
        return self._server.client_count if self._server is not None else 0

    def _start(self) -> None:
        try:
            self._server = MjpegHttpServer(self.frames, self.fps, self.port)
        except OSError as exc:
            raise ServerError(f"cannot listen on 127.0.0.1:{self.port}: {exc}") from exc
        self._server_box[0] = self._server
        self.port = self._server.port

    def _stop(self) -> None:
        assert self._server is not None
        server, self._server = self._server, None
        self._server_box[0] = None
        server.close()

    @staticmethod
    def _cleanup(server_box: list[MjpegHttpServer | None]) -> None:
        server = server_box[0]
        if server is not None:
            server_box[0] = None
            server.close()

    def freeze(self) -> None:
        if self._server is not None:
            self._server.freeze()

    def unfreeze(self) -> None:
        if self._server is not None:
            self._server.unfreeze()


@lru_cache(maxsize=4)
def rtsp_support_problem(python: Path = SYSTEM_PYTHON) -> str | None:
    """None when `python` can run rtsp_server.py; otherwise why not and which apt packages fix it."""
    if not python.exists():
        return f"{python} not found: apt-get install {' '.join(RTSP_APT_PACKAGES)}"
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        result = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=30, env=_system_python_env()
        )
    except subprocess.TimeoutExpired:
        return None  # not a missing package: let start() fail loudly with the child's own output
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"{python} lacks GStreamer RTSP bindings ({last}): apt-get install {' '.join(RTSP_APT_PACKAGES)}"
        )
    return None


def _system_python_env() -> dict[str, str]:
    # The venv's variables would point Debian's python at the venv's site-packages.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _kill_process(process: subprocess.Popen[bytes], timeout_s: float = RTSP_STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; always reaps the child and closes its pipes."""
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
        except ProcessLookupError:
            pass
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class RtspServer(_VideoServer):
    """RTSP (H.264 over RTP/TCP) camera at rtsp://127.0.0.1:PORT/stream, served by a /usr/bin/python3 child.

    Clients must use TCP transport (ffmpeg falls back to it on its own; set
    OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp" to skip the UDP attempt).
    """

    scheme = "rtsp"

    def __init__(
        self,
        source: VideoSource,
        fps: float = 25.0,
        mount: str = "/stream",
        max_frames: int = DEFAULT_MAX_FRAMES,
        python: Path = SYSTEM_PYTHON,
    ) -> None:
        if not mount.startswith("/"):
            raise ValueError(f"mount must start with '/', got {mount!r}")
        super().__init__(source, fps, max_frames)
        height, width = cv2.imdecode(np.frombuffer(self.frames[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
        if width % 2 or height % 2:
            raise ServerError(
                f"H.264 (4:2:0) needs even frame sizes, got {width}x{height}: crop or resize the frames"
            )
        self.mount = mount
        self.python = python
        self._process: subprocess.Popen[bytes] | None = None
        # Frames as JPEG files for the child, and its stderr log; removed by close() or the finalizer.
        self._work_dir = Path(tempfile.mkdtemp(prefix="rtsp-server-"))
        self._frames_dir = self._work_dir / "frames"
        self._frames_dir.mkdir()
        for index, jpeg in enumerate(self.frames):
            (self._frames_dir / f"{index:05d}.jpg").write_bytes(jpeg)
        self._log_path = self._work_dir / "server.log"
        # The finalizer holds the child through this box, not through self, so it can run at GC and at
        # interpreter exit (weakref.finalize's default) even when a test forgets close().
        self._process_box: list[subprocess.Popen[bytes] | None] = [None]
        self._finalizer = weakref.finalize(self, RtspServer._cleanup, self._process_box, self._work_dir)

    @property
    def path(self) -> str:
        return self.mount

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def _start(self) -> None:
        if self._process is not None:  # died on its own: reap it before starting again
            _kill_process(self._process)
            self._process = None
        problem = rtsp_support_problem(self.python)
        if problem is not None:
            raise ServerError(problem)
        command = [
            str(self.python),
            str(RTSP_SERVER_SCRIPT),
            "--frames-dir",
            str(self._frames_dir),
            "--fps",
            repr(self.fps),
            "--port",
            str(self.port),
            "--mount",
            self.mount,
        ]
        # stdin stays open and unused: the child exits when it reads EOF, i.e. when this process dies.
        with self._log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=_system_python_env()
            )
        self._process_box[0] = process
        try:
            self.port = self._wait_ready(process)
        except BaseException:
            _kill_process(process)
            self._process_box[0] = None
            raise
        self._process = process

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> int:
        # Read the READY line in a helper thread so the wait is bounded even if the child never prints.
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(RTSP_READY_TIMEOUT_S)
        line = lines[0].decode(errors="replace").strip() if lines else ""
        if line.startswith("READY "):
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            return int(fields["port"])
        if reader.is_alive():
            reason = f"no READY line within {RTSP_READY_TIMEOUT_S:.0f} s"
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(RTSP_STOP_TIMEOUT_S)  # readline ended: the child is exiting
            reason = line or f"exited with code {process.returncode}"
        stderr_tail = self._log_path.read_text(errors="replace").strip()[-2000:]
        raise ServerError(f"RTSP server on port {self.port} failed: {reason}\n{stderr_tail}".rstrip())

    def _stop(self) -> None:
        assert self._process is not None
        process, self._process = self._process, None
        _kill_process(process)
        self._process_box[0] = None

    def freeze(self) -> None:
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGUSR1)

    def unfreeze(self) -> None:
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGUSR2)

    def close(self) -> None:
        self.stop()
        self._finalizer()

    @staticmethod
    def _cleanup(process_box: list[subprocess.Popen[bytes] | None], work_dir: Path) -> None:
        process = process_box[0]
        if process is not None:
            _kill_process(process)
            process_box[0] = None
        shutil.rmtree(work_dir, ignore_errors=True)
