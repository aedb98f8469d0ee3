"""Video sources: a file, a stream URL (RTSP, HTTP MJPEG from a phone camera...) or a webcam, via OpenCV.

`parse_source` tells them apart (no I/O beyond checking that a file exists); `open_video` opens one with
OpenCV's FFmpeg backend (V4L2 for webcams) and turns every failure into one `UserError` line. URLs are shown
with their credentials masked (rtsp://user:pass@host -> rtsp://***@host, and password-like query
parameters) in every message and log; `scrub_secrets` cleans any other text that may quote the URL.

Files are "not live": they are paced (or read at full speed) and no frame may be lost. URLs and webcams are
live: they deliver at their own rate and the pipeline keeps up by dropping stale frames.

Stream URLs are opened with an open timeout and a read timeout (OpenCV's FFmpeg interrupt callback), so a
dead or stalled camera can never block a read for longer than `read_timeout_s`. RTSP is opened over TCP
(no UDP attempt first, no lost packets on a busy network) with a 32-byte probe: the SDP already describes
the stream, and the default probing reads ~1 s of video before the first frame (measured on the loopback
test server: 1.1 s -> 0.06 s per open, which is what a reconnect costs). A user who sets
OPENCV_FFMPEG_CAPTURE_OPTIONS keeps their own options.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2

from app.errors import UserError
from app.url_masking import mask_url

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
DEFAULT_FPS = 30.0  # when a source does not say (many MJPEG streams)
OPEN_TIMEOUT_S = 5.0  # connecting and reading the stream header
READ_TIMEOUT_S = 3.0  # one frame; a read that takes about this long is a stalled stream
RTSP_CAPTURE_OPTIONS = "rtsp_transport;tcp|probesize;32"
CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "file" | "url" | "webcam"
    target: str | int  # file path, URL, or webcam index (or /dev/videoN)
    display: str  # safe to print: credentials masked

    @property
    def live(self) -> bool:
        return self.kind != "file"


def parse_source(text: str) -> SourceSpec:
    """Classify `--source`: a webcam index ("0"), a stream URL, a /dev/video device, or a file."""
    raw = str(text).strip()
    if not raw:
        raise UserError("no video source given; pass --source FILE, --source URL or --source 0 (webcam)")
    if raw.isdigit():
        return SourceSpec("webcam", int(raw), f"webcam {raw}")
    if raw.startswith("/dev/video"):
        return SourceSpec("webcam", raw, raw)
    scheme, sep, _ = raw.partition("://")
    if sep:
        display = mask_url(raw)
        if scheme.lower() == "file":
            raw = raw[len("file://") :]
        elif scheme.lower() in STREAM_SCHEMES:
            return SourceSpec("url", raw, display)
        else:
            raise UserError(
                f"unsupported video source scheme {scheme!r} in {display}; use one of "
                f"{', '.join(STREAM_SCHEMES)}, a file path or a webcam index"
            )
    path = Path(raw).expanduser()
    if not path.exists():
        raise UserError(f"video file {path} does not exist; check --source (or VIDEO_SOURCE)")
    if not path.is_file():
        raise UserError(
            f"video source {path} is not a file; pass a video file, a stream URL or a webcam number"
        )
    return SourceSpec("file", str(path), str(path))


def scrub_secrets(text: str, spec: SourceSpec) -> str:
    """`text` (e.g. an exception message from a library) with the raw URL and its credentials masked."""
    if spec.kind != "url" or not isinstance(spec.target, str):
        return text
    raw = spec.target
    text = text.replace(raw, spec.display)
    rest = raw.partition("://")[2].partition("?")[0]
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        text = text.replace(userinfo, "***")
        password = userinfo.partition(":")[2]
        if len(password) >= 3:  # too short a password would mask unrelated text
            text = text.replace(password, "***")
    return text


def quiet_video_backend(verbose: bool = False) -> None:
    """Keep OpenCV's and FFmpeg's own console chatter (which may echo URLs) out of the user's terminal."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "32" if verbose else "-8")  # AV_LOG_INFO / AV_LOG_QUIET
    if not verbose:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@contextlib.contextmanager
def _capture_options(spec: SourceSpec) -> Iterator[None]:
    """RTSP's fast-open options for this one open (FFmpeg reads the variable when a capture opens)."""
    scheme = str(spec.target).partition("://")[0].lower()
    if spec.kind != "url" or scheme not in ("rtsp", "rtsps") or CAPTURE_OPTIONS_ENV in os.environ:
        yield
        return
    os.environ[CAPTURE_OPTIONS_ENV] = RTSP_CAPTURE_OPTIONS
    try:
        yield
    finally:
        os.environ.pop(CAPTURE_OPTIONS_ENV, None)


def open_video(
    spec: SourceSpec,
    open_timeout_s: float = OPEN_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    threads: int = 0,
) -> cv2.VideoCapture:
    """An opened VideoCapture for `spec`, or UserError naming the source (masked) and what to check.

    `threads` > 0 caps FFmpeg's decoding threads (files and URLs): its default, one per core, costs more CPU
    a frame when many cameras decode at once."""
    threading = [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 else []
    if spec.kind == "file":
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, threading)
        if not cap.isOpened():
            cap.release()
            raise UserError(
                f"cannot decode video file {spec.display}: not a video, or not a format FFmpeg reads"
            )
        return cap
    if spec.kind == "url":
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(read_timeout_s * 1000)),
            *threading,
        ]
        with _capture_options(spec):
            cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, timeouts)
        if not cap.isOpened():
            cap.release()
            raise UserError(
                f"cannot open video stream {spec.display}: unreachable, refused or not a video stream; check "
                "the URL, the credentials and that the camera is on the network"
            )
        return cap
    cap = cv2.VideoCapture(spec.target)
    if not cap.isOpened():
        cap.release()
        device = spec.target if isinstance(spec.target, str) else f"/dev/video{spec.target}"
        raise UserError(
            f"no webcam at {spec.display} ({device} cannot be opened); check --source and the camera"
        )
    return cap


def source_fps(cap: cv2.VideoCapture) -> float | None:
    """The FPS the source declares, or None when it declares none (or nonsense)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    if fps is None or not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return None
    return float(fps)


def frame_count(cap: cv2.VideoCapture) -> int | None:
    """Frames in a file as its container says (may be approximate), or None."""
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    if count is None or not math.isfinite(count) or count <= 0:
        return None
    return int(count)
