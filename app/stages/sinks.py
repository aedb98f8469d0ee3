"""Outputs of a run: the annotated video, recognition events, and per-frame face tracks.

Text outputs are line-buffered: every line reaches the file when it is written, so a run that is killed
still leaves a readable file, complete up to its last frame.

- events (`--events x.jsonl`): one JSON object per recognition event, i.e. when a track gets its first
  decided label or changes it: {"camera", "time", "frame", "track", "name" (null = unknown), "status"
  ("known" | "unknown"), "similarity", "box"}. Pending (undecided) tracks make no event.
- tracks (`--tracks-out x.jsonl`): for every processed frame, one object per face shown: {"camera",
  "frame" (0-based source index), "time" (s from the source start), "track", "box" [x1,y1,x2,y2] source px,
  "score", "name" (null unless known), "similarity" (null while pending), "status"}. Track ids, frames and
  times are the camera's own.
  `--tracks-out x.csv`: MOTChallenge rows `frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`
  with 1-based frames (the format has no camera column: one camera's run per CSV file).
- video (`--output x.mp4`): the annotated frames at the source's FPS, H.264 in fragmented MP4
  (`app/vision/video_writer.py`), so a killed run leaves a video that plays up to its last frame; one
  file per camera.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from app.errors import UserError
from app.integrations.events import EventFanout
from app.pipeline.messages import TrackedFaces
from app.vision.pixel_format import FramePixels

if TYPE_CHECKING:
    from app.vision.video_writer import CrashSafeVideoWriter


def open_line_file(path: Path, what: str) -> TextIO:
    """A text file opened for writing, line-buffered; UserError naming the file when it cannot be."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - the sink closes it
    except OSError as exc:
        raise UserError(
            f"cannot write the {what} file {path}: {exc.strerror or exc}; check the path"
        ) from None


def _box(box: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in box]


def _similarity(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


class EventsSink:
    """Makes an event when a track's decided label (a name, or unknown) appears or changes: written to the
    events file (when `path` is set) and handed to the integrations' fan-out (when given: MQTT, snapshots)."""

    def __init__(self, path: Path | None, fanout: EventFanout | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fanout = fanout
        self._file: TextIO | None = None
        self._labels: dict[tuple[str, int], tuple[str, str | None]] = {}
        self.events = 0

    def open(self) -> None:
        if self.path is not None:
            self._file = open_line_file(self.path, "events")
        if self.fanout is not None and self.fanout.snapshots is not None:
            self.fanout.snapshots.open()

    def write(
        self, faces: TrackedFaces, frame: np.ndarray | FramePixels | None = None, camera: str = "default"
    ) -> list[str]:
        """Make this frame's events (`frame`: its pixels, for snapshots, made BGR only when an event needs
        them; `camera`: whose frame); their statuses."""
        statuses: list[str] = []
        meta = faces.meta
        for i in range(len(faces)):
            status = faces.statuses[i]
            if status == "pending":
                continue
            track = int(faces.track_ids[i])
            label = (status, faces.names[i])
            if self._labels.get((camera, track)) == label:
                continue
            self._labels[(camera, track)] = label
            event = {
                "camera": camera,
                "time": round(meta.source_time, 3),
                "frame": meta.frame_index,
                "track": track,
                "name": faces.names[i] if status == "known" else None,
                "status": status,
                "similarity": _similarity(faces.similarities[i]),
                "box": _box(faces.boxes[i]),
            }
            if self.fanout is not None:
                pixels = frame.bgr() if isinstance(frame, FramePixels) else frame  # (NV12: converted once)
                self.fanout.publish(event, pixels, faces)  # adds "snapshot" to the event when one is written
            if self._file is not None:
                self._file.write(json.dumps(event) + "\n")
            self.events += 1
            statuses.append(status)
        return statuses

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TracksSink:
    """Every face shown on every frame: JSON lines, or MOTChallenge CSV for a `.csv` name."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.mot = self.path.suffix.lower() == ".csv"
        self._file: TextIO | None = None

    def open(self) -> None:
        self._file = open_line_file(self.path, "tracks")

    def write(self, faces: TrackedFaces, camera: str = "default") -> None:
        assert self._file is not None
        if not len(faces):
            return
        meta = faces.meta
        lines = []
        for i in range(len(faces)):
            x1, y1, x2, y2 = (float(v) for v in faces.boxes[i])
            track, score = int(faces.track_ids[i]), float(faces.scores[i])
            if self.mot:
                # MOTChallenge boxes are 1-based (the top-left pixel is (1, 1)); its tools subtract 1.
                box = f"{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f}"
                lines.append(f"{meta.frame_index + 1},{track},{box},{score:.4f},-1,-1,-1")
                continue
            status = faces.statuses[i]
            row = {
                "camera": camera,
                "frame": meta.frame_index,
                "time": round(meta.source_time, 3),
                "track": track,
                "box": _box(faces.boxes[i]),
                "score": round(score, 4),
                "name": faces.names[i] if status == "known" else None,
                "similarity": None if status == "pending" else _similarity(faces.similarities[i]),
                "status": status,
            }
            lines.append(json.dumps(row))
        # One write per frame: with line buffering every line still reaches the file before the next frame.
        self._file.write("\n".join(lines) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class VideoSink:
    """The annotated video at the source's FPS: H.264, readable up to the last frame after a hard crash."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: CrashSafeVideoWriter | None = None
        self.frames = 0

    def open(self, fps: float, size_wh: tuple[int, int]) -> None:
        # Imported here: PyAV is loaded only by runs that write a video.
        from app.vision.video_writer import CrashSafeVideoWriter

        self._writer = CrashSafeVideoWriter(self.path, fps, size_wh)

    def write(self, frame_bgr: np.ndarray) -> None:
        assert self._writer is not None
        self._writer.write(frame_bgr)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
