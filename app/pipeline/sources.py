"""Video sources: a file, a stream URL (RTSP, HTTP MJPEG from a phone camera...) or a webcam, via OpenCV.

`parse_source` tells them apart (no I/O beyond checking that a file exists); `open_video` opens one with
OpenCV's FFmpeg backend (V4L2 for webcams) and turns every failure into one `UserError` line. URLs are shown
with their credentials masked (rtsp://user:pass@host -> rtsp://***@host) in every message and log.

Files are "not live": they are paced (or read at full speed) and no frame may be lost. URLs and webcams are
live: they deliver at their own rate and the pipeline keeps up by dropping stale frames.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2

from app.config import mask_credentials
from app.errors import UserError

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
DEFAULT_FPS = 30.0  # when a source does not say (many MJPEG streams)
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 10_000


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
        display = mask_credentials(raw)
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


def quiet_video_backend(verbose: bool = False) -> None:
    """Keep OpenCV's and FFmpeg's own console chatter (which may echo URLs) out of the user's terminal."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "32" if verbose else "-8")  # AV_LOG_INFO / AV_LOG_QUIET
    if not verbose:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def open_video(spec: SourceSpec) -> cv2.VideoCapture:
    """An opened VideoCapture for `spec`, or UserError naming the source (masked) and what to check."""
    if spec.kind == "file":
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise UserError(
                f"cannot decode video file {spec.display}: not a video, or not a format FFmpeg reads"
            )
        return cap
    if spec.kind == "url":
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            READ_TIMEOUT_MS,
        ]
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
