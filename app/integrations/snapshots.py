"""Face snapshots: a JPEG crop of the face of every recognition event (and optionally the whole frame), and
their retention.

Files are named `<camera>_<UTC yyyymmdd-HHMMSS-mmm>_track<id>.jpg` (`..._frame.jpg` for the whole frame,
boxes drawn), so a listing sorts by time and every name says where and when. A file is written under a
temporary name and renamed, so no half-written JPEG is ever seen, and no existing file is overwritten (a
clash gets `-2`, `-3`...). Retention reads the time from the name (not the file's mtime, which copies and
backups change) and only ever deletes files named as above.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from app.errors import UserError
from app.integrations.discovery import slug
from app.pipeline.messages import TrackedFaces
from app.vision.drawing import draw_faces

log = logging.getLogger(__name__)

CROP_MARGIN = 0.25  # of the box's size on each side: hair, chin and ears make a crop a person recognises
JPEG_QUALITY = 90
_STAMP = "%Y%m%d-%H%M%S"
_NAME = re.compile(
    r"^(?P<camera>[a-z0-9_]+)_(?P<stamp>\d{8}-\d{6})-(?P<ms>\d{3})_track(?P<track>\d+)(?:-\d+)?"
    r"(?P<frame>_frame)?\.jpg$"
)


def snapshot_stem(camera: str, track: int, unix_time: float) -> str:
    moment = datetime.fromtimestamp(unix_time, UTC)
    return f"{slug(camera)}_{moment.strftime(_STAMP)}-{moment.microsecond // 1000:03d}_track{track}"


def snapshot_time(path: Path) -> float | None:
    """Unix time a snapshot was taken, from its name; None for a file that is not a snapshot."""
    match = _NAME.match(path.name)
    if match is None:
        return None
    moment = datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=UTC)
    return moment.timestamp() + int(match["ms"]) / 1000.0


def face_crop(frame: np.ndarray, box: list[float] | np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """The face box grown by `margin` on each side, clipped to the frame (never empty)."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = int(max(0, min(width - 1, x1 - dx))), int(max(0, min(height - 1, y1 - dy)))
    right, bottom = int(min(width, max(left + 1, x2 + dx))), int(min(height, max(top + 1, y2 + dy)))
    return frame[top:bottom, left:right]


@dataclass
class SnapshotWriter:
    """Writes the snapshots of one sink; picklable (it travels to the sink process with the stage)."""

    folder: Path
    full_frame: bool = False

    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the snapshot folder {self.folder}: {exc.strerror or exc}; "
                "check FACEPIPE_SNAPSHOTS_DIR"
            ) from None

    def write(
        self,
        frame: np.ndarray,
        box: list[float] | np.ndarray,
        camera: str,
        track: int,
        unix_time: float,
        faces: TrackedFaces | None = None,
    ) -> Path | None:
        """Write the crop (and the frame when asked); the crop's path, or None when the disk refused."""
        stem = snapshot_stem(camera, track, unix_time)
        path = self._write_new(stem, "", face_crop(frame, box))
        if path is not None and self.full_frame:
            canvas = frame.copy()
            if faces is not None:
                f = faces
                draw_faces(canvas, f.boxes, f.track_ids, f.names, f.statuses, f.similarities)
            self._write_new(path.stem, "_frame", canvas)
        return path

    def _write_new(self, stem: str, suffix: str, image: np.ndarray) -> Path | None:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        for attempt in range(1, 100):
            name = stem if attempt == 1 or suffix else f"{stem}-{attempt}"
            path = self.folder / f"{name}{suffix}.jpg"
            temporary = self.folder / f".{name}{suffix}.jpg.part"
            try:
                with open(temporary, "xb") as file:
                    file.write(data.tobytes())
                if path.exists():  # never replace a file that is there
                    temporary.unlink()
                    if suffix:
                        return None
                    continue
                os.replace(temporary, path)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                # A full disk must not stop the pipeline: say it, go on without this snapshot.
                log.warning("cannot write snapshot %s: %s", path, exc.strerror or exc)
                temporary.unlink(missing_ok=True)
                return None
        return None


@dataclass
class SnapshotRetention:
    """Deletes snapshots older than `max_age_s`, then the oldest crops (and frames) beyond `max_count`."""

    folder: Path
    max_age_s: float
    max_count: int
    clock: Callable[[], float] = time.time

    def prune(self) -> int:
        """Delete what is past retention; the number of files deleted."""
        try:
            entries = [(snapshot_time(p), p) for p in self.folder.iterdir()]
        except OSError:
            return 0
        snaps = sorted((t, p) for t, p in entries if t is not None)
        now = self.clock()
        crops = [(t, p) for t, p in snaps if not p.stem.endswith("_frame")]
        doomed = {p for t, p in snaps if now - t > self.max_age_s}
        excess = len([1 for t, p in crops if p not in doomed]) - self.max_count
        for _, p in (item for item in crops if item[1] not in doomed):
            if excess <= 0:
                break
            doomed.add(p)
            doomed.add(p.with_name(f"{p.stem}_frame.jpg"))
            excess -= 1
        deleted = 0
        for p in doomed:
            try:
                p.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete old snapshot %s: %s", p, exc.strerror or exc)
        return deleted
