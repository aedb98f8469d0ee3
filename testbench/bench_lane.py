"""Tracking lane microbenchmark: CPU per frame of the recognition stage alone, on real detections.

    python -m testbench.bench_lane                          # 1080p clip, 10 faces, 300 frames, 3 passes
    python -m testbench.bench_lane --frames 300 --passes 5 --profile 25

The recognition stage (ByteTrack, the identity policy, chip alignment, embed requests) is what limits one
camera on a GPU host (`stage_cpu_ms_per_frame` -> recognize in `bench_pipeline`), but a whole pipeline run
on a shared machine measures it with +-20 % noise. This runs only that stage, in this process, on the
detections the real detector and post-processing give on the benchmark clip (made once and cached under
--work), as the pipeline wires it: a file source, the embedding worker (`EmbedStage`) answering through
queues that pickle what crosses them as a process queue does. Only the stage's own `process()` calls are
timed, with the thread's CPU clock (`time.thread_time`): decoding and writing the frames into the ring,
and the worker's model calls, run on other threads, as they run in other processes in the pipeline. Each
pass starts a fresh stage on the same frames, so passes are repeats; the figure is the median pass.

The last stdout line is one JSON object: `lane_cpu_ms_per_frame` (median pass), `passes_ms` (every pass),
`lane_cpu_ms_per_frame_min` (the least disturbed pass), `lane_cpu_ms_max` and `lane_cpu_ms_max_frame` (the
median pass's slowest frame: a one-off stall), `frames`, `faces_per_frame`, `embedded` (faces a
pass sent to the worker), `tracks`, `outputs_digest` (of every frame's shown ids and names: equal digests,
the same tracks and names), `full_digest` (of everything every frame shows: ids, boxes, scores and
similarities bit for bit, names, statuses); with --profile N the top N functions of a cProfile of one
extra pass (cumulative) go to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import pstats
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.models.paths import DEFAULT_EMBEDDER, REPO_ROOT
from testbench.bench_pipeline import ensure_clip, ensure_gallery


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PickledQueue:
    """A queue.Queue whose items are pickled on put and unpickled on get, as a process queue does (the
    lane pays for pickling its requests and unpickling its answers; here on the timed thread)."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, item: Any, timeout: float | None = None) -> None:
        self._queue.put(pickle.dumps(item, pickle.HIGHEST_PROTOCOL))

    def put_nowait(self, item: Any) -> None:
        self.put(item)

    def get(self, timeout: float | None = None) -> Any:
        return pickle.loads(self._queue.get(timeout=timeout))

    def get_nowait(self) -> Any:
        return pickle.loads(self._queue.get_nowait())

    def empty(self) -> bool:
        return self._queue.empty()


def frames_of(clip: Path, count: int):
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    try:
        for _ in range(count):
            ok, image = cap.read()
            if not ok:
                return
            yield image
    finally:
        cap.release()


def detections(settings: Any, clip: Path, count: int, work: Path) -> list[Any]:
    """The pipeline's FaceDetections of the first `count` frames (real detector + post-processing), cached."""
    cache = work / f"lane-detections-{clip.stem}-{count}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    from app.cameras import CameraConfig, effective_det_threshold, effective_min_face
    from app.stages.postprocess import PostprocessStage
    from app.tracking.config import TrackerConfig

    low = TrackerConfig.from_settings(settings).low_thresh
    camera = CameraConfig(name="default", source=str(clip))
    threshold = min(effective_det_threshold(camera, settings), low)
    log(f"detecting {count} frames of {clip.name} (cached as {cache.name})")
    post = PostprocessStage(min(settings.det_threshold, low), settings.nms_threshold, {0: threshold},
                            {0: effective_min_face(camera, settings)})  # fmt: skip
    post.setup()
    out = detected(settings, clip, count, threshold, lambda raw: post.process(raw)[0])
    cache.write_bytes(pickle.dumps(out, pickle.HIGHEST_PROTOCOL))
    return out


def timed(call: Any, arg: Any, profile: cProfile.Profile | None) -> tuple[float, Any]:
    """(this thread's CPU seconds, result) of call(arg), profiled when a profile is given."""
    if profile is not None:
        profile.enable()
    start = time.thread_time()
    result = call(arg)
    took = time.thread_time() - start
    if profile is not None:
        profile.disable()
    return took, result


def detected(settings: Any, clip: Path, count: int, floor: float, then: Any = None) -> list[Any]:
    """The real detector's outputs for the first `count` frames of `clip` (candidates above `floor`), each
    passed through `then` when given (post-processing), with their stamps cleared."""
    from app.pipeline.messages import FrameMeta, FrameRef
    from app.stages.detect import DetectStage

    out: list[Any] = []
    with _ring(next(frames_of(clip, 1)).shape) as (ring, handle):
        detect = DetectStage(handle, settings.detector_model, settings.backend, os.cpu_count() or 1,
                             settings.det_size, candidate_floor=floor)  # fmt: skip
        detect.setup()
        try:
            for index, image in enumerate(frames_of(clip, count)):
                slot = ring.acquire(live=False, timeout=1.0)
                assert slot is not None
                ring.frame(slot)[:] = image
                ring.publish(slot, index + 1)
                meta = FrameMeta(slot, index + 1, index, index / 25.0, image.shape[1], image.shape[0])
                [raw] = detect.process(FrameRef(meta))
                found = raw if then is None else then(raw)
                found.meta.stamps = []
                out.append(found)
                ring.release(slot, index + 1)
        finally:
            detect.close()
    return out


class _ring:
    """A two-slot frame ring in shared memory (the stage reads its frames from one, as in the pipeline)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(v) for v in shape)

    def __enter__(self):
        from app.pipeline.frame_ring import FrameRing, FrameRingHandle

        lock = multiprocessing.get_context("spawn").Lock()
        name = f"facering-{os.getpid()}-lane{time.monotonic_ns() % 10**9}"
        self.ring = FrameRing.create(name, 2, self.shape, lock)
        self.handle = FrameRingHandle(name, lock)
        return self.ring, self.handle

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        self.ring.close()
        self.ring.unlink()


def one_pass(settings: Any, clip: Path, found: list[Any], profile: cProfile.Profile | None) -> dict[str, Any]:
    """One fresh recognition stage over the frames; CPU seconds of its process() calls.

    As in the pipeline, the stage's thread does only the stage's work: a thread decodes the clip into the
    ring's two slots ahead of it (capture's part) and another serves the embedding requests (the worker's),
    so neither's CPU is counted nor do they flush the lane's caches between its frames on its own thread."""
    from app.pipeline.messages import SourceInfo
    from app.stages.embed import EmbedStage
    from app.stages.recognize import EmbedChannel, RecognizeStage

    requests, results = PickledQueue(), PickledQueue()
    worker = EmbedStage(settings, requests, [results], threads=1)
    worker.setup()
    shape = (found[0].meta.height, found[0].meta.width, 3)
    calls: list[float] = []  # each frame's process() CPU seconds
    outputs = []
    full = hashlib.sha1()
    stop = threading.Event()
    filled = [threading.Semaphore(0) for _ in range(2)]
    free = [threading.Semaphore(1) for _ in range(2)]
    with _ring(shape) as (ring, handle):

        def produce() -> None:
            for index, image in enumerate(frames_of(clip, len(found))):
                while not free[index % 2].acquire(timeout=0.2):
                    if stop.is_set():
                        return
                ring.frame(index % 2)[:] = image
                filled[index % 2].release()

        def serve() -> None:
            while not stop.is_set():
                worker.serve(0.02)

        helpers = [threading.Thread(target=produce, daemon=True), threading.Thread(target=serve, daemon=True)]
        stage = RecognizeStage(handle, settings, threads=1, embed=EmbedChannel(requests, results, 0),
                               result_lag=settings.result_lag)  # fmt: skip
        stage.setup()
        stage.start({0: SourceInfo(frame_shape=shape, fps=25.0, live=False, source=str(clip))})
        for helper in helpers:
            helper.start()
        try:
            for index, found_on in enumerate(found):
                msg = dataclasses.replace(found_on, meta=dataclasses.replace(found_on.meta, slot=index % 2))
                filled[index % 2].acquire()
                took, [tracked] = timed(stage.process, msg, profile)
                calls.append(took)
                free[index % 2].release()
                outputs.append((tracked.track_ids.tolist(), list(tracked.names)))
                full.update(_frame_bytes(tracked))
            embedded = stage.embedded_faces
            tracks = max((state.max_id for state in stage.streams.values()), default=0)
        finally:
            stop.set()
            for helper in helpers:
                helper.join(5)
            stage.close()
            worker.close()
    return {"cpu_s": sum(calls), "calls": calls, "embedded": embedded, "tracks": tracks, "outputs": outputs,
            "full_digest": full.hexdigest()[:12]}  # fmt: skip


def _frame_bytes(tracked: Any) -> bytes:
    """Everything a frame's TrackedFaces shows, as bytes: ids, boxes, scores, similarities (their exact
    bits), names, statuses and the gallery flag."""
    arrays = (tracked.track_ids, tracked.boxes, tracked.scores, tracked.similarities)
    text = repr((list(tracked.names), list(tracked.statuses), bool(tracked.gallery_unavailable)))
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays) + text.encode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbench.bench_lane", description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, help="video file (default: the generated 1080p clip)")
    p.add_argument("--faces", type=int, default=10, help="faces per frame of the generated clip")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--passes", type=int, default=3, help="timed passes (each a fresh stage)")
    p.add_argument("--profile", type=int, default=0, help="print the top N functions of a profiled pass")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "out" / "bench_pipeline", help="inputs")
    p.add_argument("--label", default="", help="free text stored in the JSON")
    p.add_argument("--embedder", type=Path, default=DEFAULT_EMBEDDER, help="embedder ONNX (the worker's)")
    p.add_argument("--embedder-kind", default="auto", choices=("auto", "dlib", "arcface"))
    p.add_argument("--dump", type=Path, help="write every frame's shown ids and names here (JSON)")
    args = p.parse_args(argv)

    from app.config import load_settings

    clip = args.source or ensure_clip("1080p", args.frames, args.work, args.faces)
    gallery = ensure_gallery(args.embedder, args.embedder_kind, args.work)
    settings = load_settings(
        {"video_source": str(clip), "qdrant_path": str(gallery), "keep_unknown": False, "gui": False,
         "threads": 1, "embedder_model": str(args.embedder), "embedder": args.embedder_kind},
        env_file=None,
    )  # fmt: skip
    found = detections(settings, clip, args.frames, args.work)
    cv2.setNumThreads(1)
    passes = [one_pass(settings, clip, found, None) for _ in range(args.passes)]
    if any(p["full_digest"] != passes[0]["full_digest"] for p in passes):
        log("warning: passes gave different tracks or names")
    frames = len(found)
    per_frame = [1000.0 * p["cpu_s"] / frames for p in passes]
    median_pass = passes[int(np.argsort(per_frame)[len(per_frame) // 2])]
    if args.profile:
        profile = cProfile.Profile()
        one_pass(settings, clip, found, profile)
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(args.profile)
        log(text.getvalue())
    result = {
        "label": args.label,
        "source": clip.name,
        "frames": frames,
        "faces_per_frame": round(float(np.mean([len(m.scores) for m in found])), 2),
        "passes_ms": [round(v, 3) for v in per_frame],
        "lane_cpu_ms_per_frame": round(statistics.median(per_frame), 3),
        "lane_cpu_ms_per_frame_min": round(min(per_frame), 3),  # the least disturbed pass
        # The slowest frame of the median pass and its index: a one-off stall, which a mean hides.
        "lane_cpu_ms_max": round(1000.0 * max(median_pass["calls"]), 3),
        "lane_cpu_ms_max_frame": int(np.argmax(median_pass["calls"])),
        "embedded": passes[0]["embedded"],
        "tracks": passes[0]["tracks"],
        # The shown ids and names of every frame: equal digests = the same tracks and names frame by frame.
        "outputs_digest": hashlib.sha1(repr(passes[0]["outputs"]).encode()).hexdigest()[:12],
        # ... and of everything every frame shows, boxes, scores and similarities bit for bit, statuses.
        "full_digest": passes[0]["full_digest"],
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    if args.dump:
        args.dump.write_text(json.dumps(passes[0]["outputs"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
