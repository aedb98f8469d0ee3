"""GUI / sink stage: the last consumer of every frame of every camera. Draws, shows, writes, frees the slot.

One process serves every stream: one window (a mosaic of the cameras when there are several), one events
and one tracks file whose rows carry `camera`, and one annotated video per camera (`--output` is the file
with one camera, a folder of NAME.mp4 with several).

Per frame: copy the pixels out of the ring (only when something will show or store them) and release the
slot at once, write the events and tracks lines, draw boxes, names, similarity, track ids, FPS and the
per-stage latency of this frame, then write the video frame and show the window. Closing the window,
`q` or Esc ends the run (`StopPipeline("quit key pressed (q)")`), closing the window too
(`StopPipeline("window closed")`).

A window needs OpenCV's highgui (the opencv-python wheel, not opencv-python-headless) and a display;
`gui_unavailable_reason()` tells which is missing before anything starts, and the CLI suggests --no-gui.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from app.integrations.events import EventFanout
from app.pipeline.frame_ring import FrameRingHandle, StreamRings
from app.pipeline.messages import SourceInfo, TrackedFaces
from app.pipeline.metrics import RollingFps
from app.pipeline.stage_runner import Capabilities, StopPipeline
from app.stages.opencv_window import (  # noqa: F401 - re-exported: the GUI stage's names
    QUIT_KEYS,
    WINDOW_TITLE,
    OpenCvWindow,
    Window,
    gui_unavailable_reason,
)
from app.stages.sinks import EventsSink, TracksSink, VideoSink
from app.vision.drawing import annotate_frame
from app.vision.pixel_format import FramePixels
from app.vision.privacy import blur_faces

log = logging.getLogger(__name__)

SHORT_NAMES = {"postprocess": "post", "recognize": "recog"}


def video_paths(output: Path, cameras: list[str]) -> list[Path]:
    """Where each camera's annotated video goes: `output` itself for one camera, else NAME.mp4 under the
    folder `output` (its suffix, if it has one, is kept for the files)."""
    output = Path(output)
    if len(cameras) == 1:
        return [output]
    suffix = output.suffix if output.suffix else ".mp4"
    folder = output.with_suffix("") if output.suffix else output
    return [folder / f"{name}{suffix}" for name in cameras]


class GuiStage:
    name = "gui"
    capabilities = Capabilities(starts=True, notes=True)

    def __init__(
        self,
        frames: FrameRingHandle | StreamRings,
        show_window: bool = True,
        output: Path | None = None,
        events: Path | None = None,
        tracks_out: Path | None = None,
        window_factory: Callable[[], Window] | None = None,
        cameras: list[str] | None = None,
        fanout: EventFanout | None = None,  # events to MQTT and snapshots
        blur_unknown: bool = False,
    ) -> None:
        self.frames = frames if isinstance(frames, StreamRings) else StreamRings(frames)
        self.cameras = list(cameras or ["default"])
        self.blur_unknown = blur_unknown
        self.show_window = show_window
        self.output = output
        self.window_factory = window_factory
        self.events = EventsSink(events, fanout)  # with neither, it still counts recognitions for the summary
        self.tracks = TracksSink(tracks_out) if tracks_out is not None else None
        paths = video_paths(output, self.cameras) if output is not None else []
        self.videos: dict[int, VideoSink] = {i: VideoSink(path) for i, path in enumerate(paths)}
        self.window: Window | None = None
        self.mosaic = None  # the window of every camera's tile (app.stages.window.MosaicWindow)
        self._fps: dict[int, RollingFps] = {}  # per camera
        self._stage_ms: dict[str, float] = {}

    @property
    def video(self) -> VideoSink | None:  # the one camera's video (one-camera callers)
        return self.videos.get(0)

    def setup(self) -> dict[str, object]:
        if self.show_window:
            if self.window_factory is None:
                from app.stages.window import MosaicWindow

                self.mosaic = MosaicWindow(self.cameras)
                self.mosaic.open()
            else:
                self.window = self.window_factory()
                self.window.open()
        for sink in (self.events, self.tracks):
            if sink is not None:
                sink.open()
        return {}

    def start(self, sources: dict[int, SourceInfo]) -> None:
        for stream, video in self.videos.items():
            info = sources.get(stream)
            if info is None or info.frame_shape is None:
                continue  # a camera that did not start writes no video
            height, width = info.frame_shape[:2]
            video.open(float(info.fps or 30.0), (width, height))
        self.videos = {i: v for i, v in self.videos.items() if i in sources}

    def note(self, stream: int, text: str) -> None:
        """A camera that could not start: its tile says why."""
        if self.mosaic is not None:
            self.mosaic.set_note(stream, text)

    def process(self, msg: TrackedFaces) -> list:
        meta = msg.meta
        ring = self.frames.ring(meta.stream)
        video = self.videos.get(meta.stream)
        needs_pixels = self.window is not None or self.mosaic is not None or video is not None
        pixels = FramePixels(ring.frame(meta.slot), ring.format)  # converted to BGR only if drawn or saved
        canvas = pixels.bgr_copy() if needs_pixels else None
        camera = self.cameras[meta.stream] if meta.stream < len(self.cameras) else str(meta.stream)
        # Before the release: a snapshot reads the frame. The counts reach the parent's metrics in the meta.
        meta.recognitions = tuple(self.events.write(msg, pixels, camera))
        ring.release(meta.slot, meta.seq)  # the last consumer: the slot is free for capture again
        meta.faces, meta.gallery_unavailable = len(msg), msg.gallery_unavailable
        if self.tracks is not None:
            self.tracks.write(msg, camera)
        if canvas is None:
            return []
        if self.blur_unknown:
            blur_faces(canvas, msg.boxes, msg.statuses)
        lines = self._overlay_lines(msg)
        annotate_frame(canvas, msg.boxes, msg.track_ids, msg.names, msg.statuses, msg.similarities, lines)
        if video is not None:
            video.write(canvas)
        if self.window is not None and not self.window.show(canvas):
            raise StopPipeline(getattr(self.window, "quit_reason", None) or "window closed")
        if self.mosaic is not None:
            self.mosaic.update(meta.stream, canvas)
            self.mosaic.set_note(meta.stream, meta.status or None)  # e.g. "reconnecting to ..."
            if not self.mosaic.show():
                raise StopPipeline(self.mosaic.last_stop_reason or "window closed")
        return []

    def _overlay_lines(self, msg: TrackedFaces) -> list[str]:
        """FPS over the last second, this frame's latency so far, and smoothed per-stage times."""
        now = time.monotonic()
        fps = self._fps.setdefault(msg.meta.stream, RollingFps()).tick(now)
        stamps = msg.meta.stamps
        latency_ms = (now - stamps[0].end) * 1000 if stamps else math.nan
        for stamp in stamps:
            ms = (stamp.end - stamp.start) * 1000
            previous = self._stage_ms.get(stamp.stage)
            self._stage_ms[stamp.stage] = ms if previous is None else 0.9 * previous + 0.1 * ms
        stages = "  ".join(f"{SHORT_NAMES.get(k, k)} {v:.0f}" for k, v in self._stage_ms.items())
        lines = [
            f"{fps:4.1f} FPS   latency {latency_ms:.0f} ms   faces {len(msg)}",
            f"ms: {stages}",
            f"frame {msg.meta.frame_index}  t={msg.meta.source_time:.2f}s",
        ]
        # Why the picture is stale or faces stay unnamed: a source reconnecting, a gallery server away.
        if msg.meta.status:
            lines.append(msg.meta.status)
        if msg.gallery_unavailable:
            lines.append("gallery unavailable: no new names, retrying")
        return lines

    def close(self) -> None:
        for sink in (*self.videos.values(), self.events, self.tracks):
            if sink is not None:
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - close the others regardless
                    log.warning("closing %s failed", type(sink).__name__, exc_info=True)
        for window in (self.window, self.mosaic):
            if window is not None:
                window.close()
        self.frames.close()
