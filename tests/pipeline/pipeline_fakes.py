"""Small real stages for supervisor tests: the real capture stage, a pixel statistic, a pass-through, a sink.

Importable by spawned stage processes (spawn copies the parent's sys.path).
`python pipeline_fakes.py VIDEO OUT [options]` runs the pipeline under a Supervisor like the CLI does:
the stop line on stderr, the summary JSON as the last stdout line, the exit code of the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from app.errors import UserError
from app.pipeline.frame_ring import FrameRingHandle, StreamRings
from app.pipeline.stage_runner import Capabilities, StopPipeline
from app.pipeline.supervisor import Supervisor
from app.stages.capture import CaptureStage


def make_video(path: Path, frames: int = 40, size: tuple[int, int] = (64, 48), fps: float = 20.0) -> Path:
    """A short real video whose frame i is filled with grey level 5 * i (so each frame is recognisable)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (5 * i) % 256, np.uint8))
    writer.release()
    return path


class VirtualClock:
    """A capture clock that only moves when the stage sleeps (starting from the real clock, so stamps look
    like the other processes'); it writes how far it has moved to `record`, so a test in another process
    can read the schedule the stage kept, whatever the load."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.start: float | None = None
        self.moved = 0.0

    def __call__(self) -> float:
        if self.start is None:
            self.start = time.monotonic()
        return self.start + self.moved

    def sleep(self, seconds: float) -> None:
        self.moved += max(0.0, seconds)
        self.record.write_text(repr(self.moved))


class MeanStage:
    """Like detection: claims the frame from the ring, then measures it."""

    def __init__(
        self,
        frames: FrameRingHandle,
        name: str = "detect",
        fail_in: str = "",
        delay_s: float = 0.0,
        setup_s: float = 0.0,
        loaded_marker: Path | None = None,
    ):
        self.name = name
        self.frames = frames
        self.fail_in = fail_in
        self.delay_s = delay_s
        self.setup_s = setup_s  # a model that takes this long to load
        self.loaded_marker = loaded_marker  # written once the load is over: tells whether anyone waited

    def setup(self) -> dict:
        time.sleep(self.setup_s)
        if self.loaded_marker is not None:
            self.loaded_marker.touch()
        if self.fail_in == "setup":
            raise UserError("model file missing.onnx does not exist; check the path")
        return {}

    def process(self, msg):
        ring = self.frames.ring
        if not ring.claim(msg.meta.slot, msg.meta.seq):
            return []
        if self.fail_in == "process" and msg.meta.frame_index == 3:
            raise ValueError("cannot measure frame 3")
        msg.meta.mean = float(ring.frame(msg.meta.slot).mean())
        time.sleep(self.delay_s)
        return [msg]

    def close(self) -> None:
        self.frames.close()


class StartingMeanStage(MeanStage):
    """MeanStage whose start(sources) takes `start_s` (as the detector page-locks its rings) and writes, to
    `started_marker`, how many frames the source had published by the end of it."""

    capabilities = Capabilities(starts=True)

    def __init__(self, frames: FrameRingHandle, start_s: float, started_marker: Path) -> None:
        super().__init__(frames)
        self.start_s = start_s
        self.started_marker = started_marker

    def start(self, sources: dict) -> None:
        time.sleep(self.start_s)
        self.started_marker.write_text(str(self.frames.ring.published))


class PassStage:
    def __init__(
        self, name: str, delay_s: float = 0.0, setup_error: str = "", close_s: float = 0.0,
        closed_marker: Path | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.delay_s = delay_s
        self.setup_error = setup_error
        self.close_s = close_s  # close() drains this long (a writer finishing), then writes closed_marker
        self.closed_marker = closed_marker

    def setup(self) -> dict:
        if self.setup_error:
            raise UserError(self.setup_error)
        return {}

    def process(self, msg):
        time.sleep(self.delay_s)
        return [msg]

    def close(self) -> None:
        time.sleep(self.close_s)
        if self.closed_marker is not None:
            self.closed_marker.write_text("closed")


class LinesSink:
    """The last stage: one JSON line per frame (line-buffered), then releases the slot."""

    name = "gui"

    def __init__(self, frames: FrameRingHandle, out: Path, stop_after: int | None = None) -> None:
        self.frames = frames
        self.out = out
        self.stop_after = stop_after
        self._file = None

    def setup(self) -> dict:
        self._file = open(self.out, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        return {}

    def process(self, msg):
        meta = msg.meta
        self._file.write(json.dumps({"frame": meta.frame_index, "mean": meta.mean}) + "\n")
        self.frames.ring.release(meta.slot, meta.seq)
        if self.stop_after is not None and meta.frame_index + 1 >= self.stop_after:
            raise StopPipeline("window closed")
        return []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self.frames.close()


class Nv12Video:
    """cv2.VideoCapture handing out NV12 frames, as an NVDEC capture keeping NV12 does."""

    def __init__(self, cap) -> None:
        self.cap = cap

    def read(self, image=None):
        from app.vision.pixel_format import bgr_to_nv12

        ok, frame = self.cap.read()
        if not ok:
            return False, None
        if image is not None and image.shape == (frame.shape[0] * 3 // 2, frame.shape[1]):
            return True, bgr_to_nv12(frame, out=image)
        return True, bgr_to_nv12(frame)

    def __getattr__(self, name):
        return getattr(self.cap, name)


class Nv12CaptureStage(CaptureStage):
    """The real capture stage on a source decoded to NV12 (stands in for NVDEC, which needs a GPU)."""

    def _open(self, spec, nvdec_format):
        cap = Nv12Video(super()._open(spec, nvdec_format))
        self._cap_format = "nv12"
        return cap


class FormatSink(LinesSink):
    """LinesSink also writing the ring's pixel format and the frame's mean as BGR."""

    def process(self, msg):
        ring = self.frames.ring
        from app.vision.pixel_format import FramePixels

        pixels = FramePixels(ring.frame(msg.meta.slot), ring.format)
        line = {"frame": msg.meta.frame_index, "format": ring.format, "bgr_mean": float(pixels.bgr().mean())}
        self._file.write(json.dumps(line) + "\n")
        ring.release(msg.meta.slot, msg.meta.seq)
        return []


def build(video: Path, out: Path, fail: str = "", stop_after: int | None = None, max_speed: bool = True,
          delay_s: float = 0.0, setup_s: float = 0.0, recognize_error: str = "",
          loaded_marker: Path | None = None, close_s: float = 0.0, closed_marker: Path | None = None,
          clock: VirtualClock | None = None) -> tuple[list, FrameRingHandle]:  # fmt: skip
    handle = Supervisor.new_ring_handle()
    timing = {} if clock is None else {"clock": clock, "sleep": clock.sleep}
    stages = [
        CaptureStage(str(video), handle, max_speed=max_speed, **timing),
        MeanStage(handle, fail_in=fail, delay_s=delay_s, setup_s=setup_s, loaded_marker=loaded_marker),
        PassStage("postprocess"),
        PassStage("recognize", setup_error=recognize_error, close_s=close_s, closed_marker=closed_marker),
        LinesSink(handle, out, stop_after=stop_after),
    ]
    return stages, handle


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("video", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fail", default="")
    parser.add_argument("--paced", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    stages, handle = build(args.video, args.out, args.fail, max_speed=not args.paced, delay_s=args.delay)
    result = Supervisor(stages, handle, ring_slots=4, summary_every_s=1.0).run()
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return result.exit_code
    print(f"stopped: {result.stop_reason}", file=sys.stderr)
    print(json.dumps(result.summary), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())


class StreamMeanStage:
    """MeanStage for several cameras: claims each frame from its own camera's ring."""

    name = "detect"

    def __init__(self, rings: StreamRings) -> None:
        self.rings = rings

    def setup(self) -> dict:
        return {}

    def process(self, msg):
        ring = self.rings.ring(msg.meta.stream)
        if not ring.claim(msg.meta.slot, msg.meta.seq):
            return []
        msg.meta.mean = float(ring.frame(msg.meta.slot).mean())
        return [msg]

    def close(self) -> None:
        self.rings.close()


class StreamLinesSink:
    """LinesSink for several cameras: one JSON line per frame with its stream, then frees its slot."""

    name = "gui"

    def __init__(self, rings: StreamRings, out: Path) -> None:
        self.rings = rings
        self.out = out
        self._file = None

    def setup(self) -> dict:
        self._file = open(self.out, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        return {}

    def process(self, msg):
        meta = msg.meta
        row = {"stream": meta.stream, "frame": meta.frame_index, "mean": meta.mean}
        self._file.write(json.dumps(row) + "\n")
        self.rings.ring(meta.stream).release(meta.slot, meta.seq)
        return []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self.rings.close()


def build_cameras(sources: list[str], out: Path, max_speed: bool = True):
    """A graph of one capture per source, the stream-aware mean, a pass-through and the sink."""
    from app.pipeline.graph import Channel, Node, PipelineGraph, Stream

    streams, nodes, channels = [], [], []
    for i, source in enumerate(sources):
        handle = Supervisor.new_ring_handle()
        name = f"capture:cam{i}"
        nodes.append(
            Node(name, CaptureStage(source, handle, max_speed=max_speed, stream=i, camera=f"cam{i}"), i)
        )
        streams.append(Stream(i, f"cam{i}", handle, name))
        channels.append(Channel(name, "detect", 10))
    rings = StreamRings({s.index: s.ring for s in streams})
    nodes += [Node("detect", StreamMeanStage(rings)), Node("postprocess", PassStage("postprocess")),
              Node("gui", StreamLinesSink(rings, out))]  # fmt: skip
    channels += [Channel("detect", "postprocess", 10), Channel("postprocess", "gui", 10)]
    return PipelineGraph(nodes, channels, streams)
