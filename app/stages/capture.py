"""Capture stage: reads frames from the source into the shared-memory ring and announces them.

- setup() opens the source and reads its first frame (so a dead source fails at start, with one line) and
  reports the frame shape and FPS the supervisor sizes the ring with.
- Files are paced at their own FPS (or `fps_target`), or read as fast as the pipeline takes them with
  `max_speed`; a file frame waits for a free slot, so none is lost.
- Live sources (URLs, webcams) are read as they come; the ring's newest-wins policy drops stale frames, and a
  frame that finds the detection queue full is dropped too (both counted). `fps_target` caps a live rate by
  skipping frames.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from app.errors import UserError
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.messages import FrameMeta, FrameRef, StageStamp
from app.pipeline.sources import (
    DEFAULT_FPS,
    frame_count,
    open_video,
    parse_source,
    quiet_video_backend,
    source_fps,
)
from app.pipeline.stage_runner import NOTHING_YET, POLL_S

log = logging.getLogger(__name__)

_REANCHOR_FRAMES = 2  # a paced file running more than this many frames late restarts its clock


class CaptureStage:
    name = "capture"

    def __init__(
        self,
        source: str,
        frames: FrameRingHandle,
        fps_target: float = 0.0,
        max_speed: bool = False,
        max_frames: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.source = source
        self.frames = frames
        self.fps_target = float(fps_target)
        self.max_speed = max_speed
        self.max_frames = max_frames
        self.verbose = verbose
        self.frames_read = 0  # frames taken from the source (live: dropped and skipped ones included)
        self.frames_skipped = 0
        self.end_reason = "end of stream"
        self.live = False
        self.drop_when_blocked = False
        self._cap: cv2.VideoCapture | None = None
        self._pending: tuple[np.ndarray, float, float, int] | None = None  # frame, read start/end, index
        self._clock_start: float | None = None
        self._live_start: float | None = None
        self._last_emit = -1e9
        self._warned_resize = False

    # -- stage API ----------------------------------------------------------------------------------------

    def setup(self) -> dict[str, object]:
        quiet_video_backend(self.verbose)
        spec = parse_source(self.source)
        self.spec = spec
        self.live = self.drop_when_blocked = spec.live
        self._cap = open_video(spec)
        self.fps = source_fps(self._cap) or DEFAULT_FPS
        first = self._read()
        if first is None:
            raise UserError(f"video source {spec.display} opened but gave no frame; check that it plays")
        self.shape = first[0].shape
        if spec.live:
            self._pending = None  # it will be stale by the time the models are loaded
        else:
            self._pending = first
        if self.max_speed or self.live:
            self.pace_fps = 0.0
        else:
            self.pace_fps = self.fps_target or self.fps
        log.info("source %s: %dx%d at %.2f fps (%s)", spec.display, self.shape[1], self.shape[0], self.fps,
                 "live" if self.live else "file")  # fmt: skip
        return {
            "frame_shape": tuple(int(v) for v in self.shape),
            "fps": self.fps,
            "live": self.live,
            "source": spec.display,
            "frame_count": None if self.live else frame_count(self._cap),
        }

    def produce(self) -> FrameRef | None:
        """The next frame in the ring as a FrameRef; None at the end; NOTHING_YET while waiting."""
        if self._pending is None:
            if self.max_frames is not None and self.frames_read >= self.max_frames:
                self.end_reason = f"frame limit reached ({self.max_frames})"
                return None
            if not self._pace():
                return NOTHING_YET
            self._pending = self._read()
            if self._pending is None:
                self.end_reason = "end of stream" if not self.live else "stream ended"
                return None
            # Live cap: skip frames that come sooner than the target rate allows.
            if self.live and self.fps_target > 0 and self._pending[2] - self._last_emit < 1 / self.fps_target:
                self._pending = None
                self.frames_skipped += 1
                return NOTHING_YET
        ring = self.frames.ring
        slot = ring.acquire(live=self.live, timeout=POLL_S)
        if slot is None:
            if self.live:
                self._pending = None  # every slot is busy: this frame is dropped (the ring counted it)
            return NOTHING_YET  # a file frame waits for a slot
        image, read_start, read_end, index = self._pending
        self._pending = None
        if index == 0:
            # Read during setup, long before the start: keep its read time, not its age.
            now = time.monotonic()
            read_start, read_end = now - (read_end - read_start), now
        if self._clock_start is None and self.pace_fps > 0:
            self._clock_start = read_end - index / self.pace_fps
        target = ring.frame(slot)
        if image.shape != target.shape:
            image = self._fit(image, target.shape)
        np.copyto(target, image)
        seq = index + 1
        ring.publish(slot, seq)
        self._last_emit = read_end
        if self.live:
            assert self._live_start is not None
            source_time = read_end - self._live_start
        else:
            source_time = index / self.fps
        meta = FrameMeta(
            slot=slot,
            seq=seq,
            frame_index=index,
            source_time=source_time,
            width=int(target.shape[1]),
            height=int(target.shape[0]),
            stamps=[StageStamp(self.name, read_start, read_end)],
        )
        return FrameRef(meta)

    def discard(self, msg: FrameRef) -> None:
        """A live frame found the detection queue full: give its slot back, counted as dropped."""
        self.frames.ring.drop(msg.meta.slot, msg.meta.seq)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self.frames.close()
        if self.frames_skipped:
            log.info("skipped %d frames to stay at %.1f fps", self.frames_skipped, self.fps_target)

    # -- helpers ------------------------------------------------------------------------------------------

    def _read(self) -> tuple[np.ndarray, float, float, int] | None:
        assert self._cap is not None
        start = time.monotonic()
        ok, image = self._cap.read()
        end = time.monotonic()
        if not ok or image is None:
            return None
        if self._live_start is None:
            self._live_start = end
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        index = self.frames_read
        self.frames_read += 1
        return image, start, end, index

    def _pace(self) -> bool:
        """True when the next file frame is due (always for live sources and max speed)."""
        if self.pace_fps <= 0:
            return True
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now - self.frames_read / self.pace_fps
        due = self._clock_start + self.frames_read / self.pace_fps
        if now >= due:
            if now - due > _REANCHOR_FRAMES / self.pace_fps:
                self._clock_start = now - self.frames_read / self.pace_fps  # fell behind: no catch-up burst
            return True
        time.sleep(min(due - now, POLL_S))
        return time.monotonic() >= due

    def _fit(self, image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A stream that changed resolution mid-way: scale to the ring's frame size."""
        if not self._warned_resize:
            log.warning(
                "source frame size changed from %dx%d to %dx%d; scaling to the first size",
                shape[1], shape[0], image.shape[1], image.shape[0],
            )  # fmt: skip
            self._warned_resize = True
        return cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_AREA)
