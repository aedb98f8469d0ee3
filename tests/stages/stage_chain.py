"""Run real stage objects in this process, chained through a real frame ring: no processes, no queues."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from app.pipeline.frame_ring import FrameRing, FrameRingHandle
from app.pipeline.messages import FrameMeta, FrameRef, SourceInfo, StageStamp
from app.pipeline.stage_runner import NOTHING_YET, capabilities_of
from app.vision.pixel_format import BGR, write_bgr


@contextmanager
def ring_of(
    shape: tuple[int, int, int], slots: int = 4, pixel_format: str = BGR
) -> Iterator[tuple[FrameRing, FrameRingHandle]]:
    """A fresh ring of (H, W, 3) pictures stored in `pixel_format` and a handle to it (as stages get),
    unlinked afterwards."""
    lock = multiprocessing.get_context("spawn").Lock()
    name = f"facering-{os.getpid()}-test{time.monotonic_ns() % 10**9}"
    ring = FrameRing.create(name, slots, shape, lock, pixel_format=pixel_format)
    handle = FrameRingHandle(name, lock)
    try:
        yield ring, handle
    finally:
        handle.close()
        ring.close()
        ring.unlink()


def put_frame(ring: FrameRing, image: np.ndarray, index: int, fps: float = 25.0) -> FrameRef:
    """Write the BGR `image` into a free slot as the capture stage would (in the ring's pixel format), and
    return its FrameRef."""
    slot = ring.acquire(live=False, timeout=1.0)
    assert slot is not None, "ring full: release frames in the test"
    write_bgr(ring.frame(slot), ring.format, image)
    ring.publish(slot, index + 1)
    now = time.monotonic()
    meta = FrameMeta(slot, index + 1, index, index / fps, image.shape[1], image.shape[0],
                     [StageStamp("capture", now, now)])  # fmt: skip
    return FrameRef(meta)


def sources(fps: float, frame_shape: tuple[int, ...], live: bool = False) -> dict[int, SourceInfo]:
    """What Start carries for one camera (stream 0)."""
    h, w, c = (int(v) for v in frame_shape)
    return {0: SourceInfo(frame_shape=(h, w, c), fps=fps, live=live, source="test")}


def setup_all(stages, source_info: dict) -> None:
    """setup() every stage, then start() those that declare it, as the runner does (one camera)."""
    for stage in stages:
        stage.setup()
    fps, live = source_info.get("fps", 25.0), source_info.get("live", False)
    started = sources(fps, source_info["frame_shape"], live)
    for stage in stages:
        if capabilities_of(stage).starts:
            stage.start(started)


def chain(stages, msgs) -> list:
    """Push messages through stages in order (one at a time); the outputs of the last stage."""
    for stage in stages:
        out = []
        for msg in msgs:
            out.extend(stage.process(msg))
        msgs = out
    return msgs


def run_source(capture, stages, limit: int | None = None) -> list:
    """Drive a capture stage to its end through `stages`; the last stage's outputs."""
    outputs = []
    while limit is None or capture.frames_read <= limit:
        msg = capture.produce()
        if msg is None:
            break
        if msg is NOTHING_YET:
            continue
        outputs.extend(chain(stages, [msg]))
    return outputs


def read_all(capture, ring, limit: int = 10_000) -> list:
    """Produce to the end, consuming each frame at once; (meta, pixels) per frame."""
    out = []
    while len(out) < limit:
        msg = capture.produce()
        if msg is None:
            break
        if msg is NOTHING_YET:
            continue
        meta = msg.meta
        assert ring.claim(meta.slot, meta.seq)
        out.append((meta, ring.frame(meta.slot).copy()))
        ring.release(meta.slot, meta.seq)
    return out
