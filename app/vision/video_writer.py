"""The annotated video as H.264 that survives a hard crash: fragmented MP4 (or Matroska) through PyAV.

A plain MP4 writes its index (the `moov` atom) when it is closed, so a kill -9 leaves a file no player opens.
Here the index comes first and empty (`empty_moov`) and every frame goes out as its own fragment
(`frag_every_frame`), flushed to the file at once (`flush_packets`): after a crash every frame but the
last one written plays. x264 runs with `zerolatency` (no B-frames, no look-ahead), so a frame's packet leaves
the encoder with the frame itself. H.264 in MP4 plays in browsers and on phones, unlike MPEG-4 Part 2.

Matroska (`.mkv`) gets the same guarantee with one frame per cluster (`cluster_size_limit`).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from app.errors import UserError

# suffix -> (PyAV container format, muxer options)
_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof+frag_every_frame"}
CONTAINERS: dict[str, tuple[str, dict[str, str]]] = {
    ".mp4": ("mp4", _FRAGMENTED_MP4),
    ".m4v": ("mp4", _FRAGMENTED_MP4),
    ".mov": ("mov", _FRAGMENTED_MP4),
    ".mkv": ("matroska", {"cluster_time_limit": "0", "cluster_size_limit": "1"}),
}
X264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "crf": "18"}


def check_video_path(path: Path) -> None:
    """UserError unless `path` names a container this writer makes (before any model loads)."""
    if Path(path).suffix.lower() not in CONTAINERS:
        raise UserError(
            f"unknown video format for {path}: name the --output file .mp4 (or .m4v, .mov, .mkv; H.264)"
        )


def _rate(fps: float) -> Fraction:
    if not np.isfinite(fps) or fps <= 0:
        fps = 30.0
    return Fraction(fps).limit_denominator(1001)


class CrashSafeVideoWriter:
    """BGR frames of one size to an H.264 file that stays readable up to the last frame if the process dies.

    Odd frame sizes are padded by one black row/column (H.264 with 4:2:0 chroma needs even sides).
    """

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]) -> None:
        self.path = Path(path)
        check_video_path(self.path)
        fmt, options = CONTAINERS[self.path.suffix.lower()]
        width, height = int(size_wh[0]), int(size_wh[1])
        if width < 2 or height < 2:
            raise UserError(f"cannot write a {width}x{height} video to {self.path}: frames are too small")
        self.size_wh = (width, height)
        self._pad = (height % 2, width % 2)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(
                str(self.path), "w", format=fmt, options={**options, "flush_packets": "1"}
            )
        except (OSError, av.FFmpegError) as exc:
            raise UserError(f"cannot write the video file {self.path}: {exc}; check the folder") from None
        rate = _rate(fps)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width + self._pad[1], height + self._pad[0]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(X264_OPTIONS)
        stream.codec_context.gop_size = max(1, round(float(rate)))  # a keyframe a second: quick seeking
        stream.time_base = 1 / rate
        self._stream = stream
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        if (w, h) != self.size_wh:
            raise ValueError(f"frame is {w}x{h}, the video {self.size_wh[0]}x{self.size_wh[1]}")
        if any(self._pad):
            frame_bgr = cv2.copyMakeBorder(frame_bgr, 0, self._pad[0], 0, self._pad[1], cv2.BORDER_CONSTANT)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
