"""End-to-end pipeline benchmark: FPS and per-stage latency of the real pipeline, and the model-only ceiling.

    python -m testbench.bench_pipeline --backend onnxruntime --resolution 720p --frames 300
    python -m testbench.bench_pipeline --backend torch --detector r50.onnx --embedder r100.onnx \\
        --embedder-kind arcface --resolution 1080p --frames 1000 --out results.json
    python -m testbench.bench_pipeline --streams 8 ...           # 8 cameras (copies of the clip) at once
    python -m testbench.bench_pipeline --streams 16 --live ...   # each paced at the clip's FPS (e.g. 16 x 25)

Several streams (`--streams N`) run as N cameras of one pipeline (one capture process and ring each, the
shared detector batching across them, one tracking stage and one embedding worker for all): aggregate FPS,
per-stream FPS (min/max), latency per stream and over all, frames dropped. `--live` paces every stream at
its own FPS (the clip's, or `--live-fps`) to measure latency under a realistic load instead of at
saturation; `--frames` is then per stream as well. GPU utilisation is sampled with nvidia-smi when there is
one. The JSON keys for this are `streams`, `fps` (aggregate), `fps_per_stream_min`, `fps_per_stream_max`,
`dropped`, `latency_ms.end_to_end` (p50/p95/p99 over all streams), `per_stream`, `gpu_util_percent`,
`model_only_fps` and `detector_ceiling_fps` (the detector alone at the stage's batch size).

1. Inputs, made when missing (under --work): the clip (1080p: `python -m app.demo make --preset bench1080`,
   ten faces a frame; 720p: the demo preset at 1280x720) and a gallery of the demo enrollment photos
   (obama.jpg, biden.jpg) made with the benchmarked embedder (`python -m app.enroll add`).
2. The real pipeline (assembly API: the five stage processes, shared-memory ring, queues) on the file at full
   speed (max_speed) without GUI, for --frames frames: FPS, dropped frames, per-stage latency and queue wait
   p50/p95 from the supervisor's summary; plus the steady-state FPS (middle 80 % of the frames), how many
   frames the detection stage took per call, and the recognition counters from the stage log.
3. In the same process, afterwards: the model-only ceiling on the same backend: detector images/s at the
   detection stage's batch size (and at 1), embedder faces/s at the clip's faces per frame (and at 1), and
   `model_only_fps` = 1 / (1/detector + faces/embedder), faces = the faces this run embedded per frame (the
   recognition stage embeds only tracks that need it); `model_only.fps_all_faces` embeds every face on
   every frame. Also the decode FPS of the clip in one process and the time to copy a frame into a slot.
The last stdout line is one JSON object (also written to --out).

A random-weight detector (testbench.export_onnx --random-weights) finds thousands of "faces" per frame,
which would make post-processing, tracking and embedding meaningless. Unless --raw-detector is given, such a
detector is benchmarked as a composite ONNX (`guided_detector`) that computes it in full but outputs the
default detector's detections: the cost of the big model, the faces of the real one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import helper, numpy_helper

from app.errors import UserError
from app.models.paths import DEFAULT_DETECTOR, DEFAULT_EMBEDDER, DEMO_IMAGES_DIR, REPO_ROOT

RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}
CLIP_FPS = 25.0
RANDOM_WEIGHTS_KEY = ".random-weights"  # as testbench.export_onnx writes it
EMBEDDING_LINE = re.compile(r"embedding: (\d+) faces in (\d+) batches \(([\d.]+) a batch\)")
RECOGNITION_LINE = re.compile(
    r"recognition: (\d+) tracks, (\d+) faces embedded, (\d+) named, (\d+) re-linked, (\d+) scene cuts"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------------------


def ensure_clip(resolution: str, frames: int, work: Path, faces: int = 10) -> Path:
    """The benchmark clip of at least `frames` frames, rendered by `python -m app.demo make` when missing."""
    w, h = RESOLUTIONS[resolution]
    seconds = math.ceil(frames / CLIP_FPS) + 1
    if resolution == "1080p":
        stem = f"bench1080-{faces}faces"
        args = ["--preset", "bench1080", "--faces", str(faces)]
    else:
        stem = f"demo{h}"
        args = ["--preset", "demo", "--size", f"{w}x{h}"]
    # A longer clip made by an earlier run will do: its first frames are the same scenario.
    for made in sorted(work.glob(f"{stem}-*s.mp4")):
        length = made.stem.rsplit("-", 1)[1].removesuffix("s")
        if length.isdigit() and int(length) >= seconds and made.with_suffix(".gt.json").is_file():
            return made
    path = work / f"{stem}-{seconds}s.mp4"
    work.mkdir(parents=True, exist_ok=True)
    log(f"making {path.name} ({seconds} s at {w}x{h})")
    cmd = [sys.executable, "-m", "app.demo", "make", *args, "--seconds", str(seconds), "--out", str(path)]
    _run_checked(cmd, "render the benchmark clip")
    return path


def ensure_h264(clip: Path) -> Path:
    """The clip re-encoded as H.264 (the generated clips are MPEG-4 part 2, which NVDEC may not take), made
    once beside it with the pipeline's own writer; its ground truth is copied along."""
    out = clip.with_name(f"{clip.stem}-h264.mp4")
    truth = clip.with_suffix(".gt.json")
    if out.is_file() and out.stat().st_size > 0:
        return out
    from app.vision.video_writer import CrashSafeVideoWriter  # PyAV only where the clip is made

    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    fps = cap.get(cv2.CAP_PROP_FPS) or CLIP_FPS
    writer = None
    log(f"re-encoding {clip.name} as H.264")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if writer is None:
                writer = CrashSafeVideoWriter(
                    out.with_suffix(".part.mp4"), fps, (frame.shape[1], frame.shape[0])
                )
            writer.write(frame)
    finally:
        cap.release()
        if writer is not None:
            writer.close()
    out.with_suffix(".part.mp4").replace(out)
    if truth.is_file():
        out.with_suffix(".gt.json").write_text(truth.read_text())
    return out


def ensure_gallery(embedder: Path, kind: str, work: Path, images_dir: Path = DEMO_IMAGES_DIR) -> Path:
    """A gallery of the demo enrollment photos made with `embedder` (ONNX Runtime; the gallery only cares
    which embedder file made it), in a folder named after the file, enrolled once."""
    from app.demo.scenario import demo_sets
    from app.inference.spec import model_file_id

    folder = work / f"gallery-{kind}-{model_file_id(embedder)}"
    done = folder / "enrolled.json"
    if done.is_file():
        return folder
    enroll = demo_sets(images_dir).enroll
    for name, photos in enroll.items():
        cmd = [
            sys.executable, "-m", "app.enroll", "--gallery", str(folder), "--embedder-model", str(embedder),
            "--embedder", kind, "--backend", "onnxruntime", "--detector-model", str(DEFAULT_DETECTOR),
            "add", name, *map(str, photos),
        ]  # fmt: skip
        _run_checked(cmd, f"enroll {name}")
    done.write_text(json.dumps({name: [p.name for p in photos] for name, photos in enroll.items()}))
    return folder


def _run_checked(cmd: list[str], what: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise UserError(f"could not {what} (exit {proc.returncode}): {tail}")


def is_random_weights(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(p.key == RANDOM_WEIGHTS_KEY for p in proto.metadata_props)


def _prefix_graph(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    """Prefix every node, edge, initializer and value name of `graph` except the names in `keep`."""

    def rename(name: str) -> str:
        return name if not name or name in keep else prefix + name

    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for items in (graph.initializer, graph.value_info, graph.output):
        for item in items:
            item.name = rename(item.name)


def guided_detector(heavy: Path, guide: Path, out: Path) -> Path:
    """An ONNX detector that runs `heavy` in full and outputs `guide`'s detections, for benchmarking.

    Each output is guide_output + 0 * mean(heavy_output): exactly the guide's values (the heavy outputs are
    finite), and no runtime can drop the heavy graph, since x * 0 is not 0 for inf/NaN. Both must be biubug6
    RetinaFace exports with the same priors (any backbone: mobilenet0.25, ResNet-50).
    """
    g = onnx.load(str(guide))
    h = onnx.load(str(heavy))
    input_name = g.graph.input[0].name
    if [o.name for o in g.graph.output] != [o.name for o in h.graph.output]:
        raise UserError(f"{heavy} and {guide} have different outputs; both must be RetinaFace exports")
    outputs = [o.name for o in g.graph.output]
    initializer_names = {i.name for i in h.graph.initializer}
    heavy_input = next(i.name for i in h.graph.input if i.name not in initializer_names)
    _prefix_graph(h.graph, "heavy/", keep=set())
    for node in h.graph.node:  # the heavy graph reads the guide's input
        node.input[:] = [input_name if n == "heavy/" + heavy_input else n for n in node.input]
    _prefix_graph(g.graph, "guide/", keep={input_name, *(i.name for i in g.graph.input)})
    zero = numpy_helper.from_array(np.zeros((), np.float32), "tie/zero")
    ties = []
    for name in outputs:
        ties += [
            helper.make_node("ReduceMean", ["heavy/" + name], [f"tie/{name}_mean"], keepdims=0),
            helper.make_node("Mul", [f"tie/{name}_mean", "tie/zero"], [f"tie/{name}_zero"]),
            helper.make_node("Add", ["guide/" + name, f"tie/{name}_zero"], [name]),
        ]
    graph_outputs = []
    for o in g.graph.output:
        o = onnx.ValueInfoProto.FromString(o.SerializeToString())
        o.name = o.name.removeprefix("guide/")
        graph_outputs.append(o)
    graph = helper.make_graph(
        [*g.graph.node, *h.graph.node, *ties],
        "guided_retinaface",
        [i for i in g.graph.input if i.name == input_name],
        graph_outputs,
        [*g.graph.initializer, *h.graph.initializer, zero],
    )
    opset = max(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) for m in (g, h))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(g.ir_version, h.ir_version)
    for key, value in (("guided_by", guide.name), ("heavy", heavy.name)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def faces_per_frame(clip: Path, frames: int) -> float:
    """Mean ground-truth faces (at least half visible) over the first `frames` frames of the clip."""
    from app.demo.ground_truth import load_ground_truth

    truth = load_ground_truth(clip)
    n = min(frames, truth.n_frames)
    return float(np.mean([len(truth.visible_faces(i, 0.5)) for i in range(n)])) if n else 0.0


# -- the pipeline -----------------------------------------------------------------------------------------


def _by_stream(frames: Any) -> dict[int, list[int]]:
    """Source indices of finished frames per stream, ascending."""
    out: dict[int, list[int]] = {}
    for stream, index, _ in frames:
        out.setdefault(stream, []).append(index)
    return {k: sorted(v) for k, v in out.items()}


SLOW_MS = 40.0  # the live end-to-end target: the timeline counts the frames over it


class _FrameLog:
    """Wraps the supervisor's metrics.add: keeps each finished frame's sink time and detect-call stamp."""

    def __init__(self, add: Any) -> None:
        self._add = add
        self.done: list[float] = []
        self.e2e_ms: list[tuple[float, float]] = []  # (sink time, end-to-end ms) per frame
        self.detect_calls: dict[tuple[float, float], int] = {}
        # Per finished frame: stream, source index, and its stamps as (stage, start, end).
        self.frames: list[tuple[int, int, tuple[tuple[str, float, float], ...]]] = []

    def __call__(self, meta: Any) -> None:
        self._add(meta)
        if not meta.stamps:
            return
        self.done.append(meta.stamps[-1].end)
        self.e2e_ms.append((meta.stamps[-1].end, (meta.stamps[-1].end - meta.stamps[0].end) * 1e3))
        stamps = tuple((s.stage, s.start, s.end) for s in meta.stamps)
        self.frames.append((int(meta.stream), int(meta.frame_index), stamps))
        for stamp in meta.stamps:
            if stamp.stage == "detect":
                key = (stamp.start, stamp.end)  # frames of one call share their stamp
                self.detect_calls[key] = self.detect_calls.get(key, 0) + 1

    def steady_fps(self) -> float | None:
        """Frames per second over the middle 80 % of the frames (start-up and drain left out)."""
        done = sorted(self.done)
        if len(done) < 20:
            return None
        a, b = int(len(done) * 0.1), int(len(done) * 0.9)
        span = done[b] - done[a]
        return round((b - a) / span, 2) if span > 0 else None

    def steady_latency(self) -> dict[str, float] | None:
        """End-to-end p50/p95/p99 of the frames finished in the middle 80 % of the run (start-up and
        drain left out, as for fps_steady)."""
        done = sorted(self.e2e_ms)
        if len(done) < 20:
            return None
        a, b = int(len(done) * 0.1), int(len(done) * 0.9)
        values = np.array([ms for _, ms in done[a:b]])
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}

    def dropped_steady(self) -> int | None:
        """Frames lost (live: overwritten in the ring or never taken) among those each stream read while the
        run was in its middle 80 % (the window of fps_steady): gaps in a stream's source indices there."""
        if len(self.frames) < 20:
            return None
        done = sorted(self.done)
        a, b = done[int(len(done) * 0.1)], done[int(len(done) * 0.9)]
        lost = 0
        for indices in _by_stream(f for f in self.frames if a <= f[2][-1][2] <= b).values():
            lost += indices[-1] - indices[0] + 1 - len(set(indices))
        return lost

    def timeline(self, bucket_s: float = 0.5, steps_at_most: int | None = None) -> list[dict[str, object]]:
        """The run in steps of `bucket_s` from the first frame read, by the time each frame was read:
        frames finished, frames lost before the next one a stream delivered (live drops, by when they
        happened), the slowest end-to-end and how many took longer than `SLOW_MS`, and each stage's slowest
        time in it and wait before it. Shows which stage held a start-up or a stall up (the first
        `steps_at_most` steps only, when given)."""
        if not self.frames:
            return []
        t0 = min(f[2][0][1] for f in self.frames)
        steps: dict[int, dict[str, Any]] = {}

        def step(t: float) -> dict[str, Any]:
            k = int((t - t0) / bucket_s)
            empty = {"t_s": round(k * bucket_s, 2), "frames": 0, "lost": 0, "e2e_max_ms": 0.0, "slow": 0}
            return steps.setdefault(k, {**empty, "stage_max_ms": {}, "wait_max_ms": {}})

        last_index: dict[int, int] = {}
        for stream, index, stamps in sorted(self.frames, key=lambda f: (f[0], f[1])):
            row = step(stamps[0][1])
            row["frames"] += 1
            before = last_index.get(stream)
            if before is not None and index > before + 1:
                row["lost"] += index - before - 1
            last_index[stream] = index
            e2e_ms = (stamps[-1][2] - stamps[0][2]) * 1e3
            row["e2e_max_ms"] = max(row["e2e_max_ms"], round(e2e_ms, 1))
            row["slow"] += e2e_ms > SLOW_MS
            prev_end = None
            for stage, start, end in stamps:
                took = round((end - start) * 1e3, 1)
                row["stage_max_ms"][stage] = max(row["stage_max_ms"].get(stage, 0.0), took)
                if prev_end is not None:
                    waited = round((start - prev_end) * 1e3, 1)
                    row["wait_max_ms"][stage] = max(row["wait_max_ms"].get(stage, 0.0), waited)
                prev_end = end
        return [steps[k] for k in sorted(steps)][:steps_at_most]

    def detect_batches(self) -> dict[str, object]:
        sizes = list(self.detect_calls.values())
        if not sizes:
            return {}
        hist = {str(k): sizes.count(k) for k in sorted(set(sizes))}
        return {
            "calls": len(sizes),
            "mean": round(float(np.mean(sizes)), 2),
            "max": max(sizes),
            "sizes": hist,
        }


class _CpuSampler:
    """Samples the stage processes' CPU time from /proc while the pipeline runs; `percent(t0, t1)` is each
    stage's CPU use in % of one core between two monotonic times (e.g. its first and last finished frame)."""

    def __init__(self, every_s: float = 0.1) -> None:
        import threading

        self.every_s = every_s
        self._stop = threading.Event()
        self._samples: dict[str, list[tuple[float, float]]] = {}  # stage -> [(monotonic, cpu seconds)]
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _loop(self) -> None:
        import multiprocessing

        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self.every_s):
            for child in multiprocessing.active_children():
                try:
                    with open(f"/proc/{child.pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                self._samples.setdefault(child.name, []).append((time.monotonic(), cpu))

    def percent(self, start: float, end: float) -> dict[str, float]:
        out = {}
        for name, samples in self._samples.items():
            inside = [s for s in samples if start <= s[0] <= end]
            if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
                (t0, c0), (t1, c1) = inside[0], inside[-1]
                out[name] = round(100.0 * (c1 - c0) / (t1 - t0), 1)
        return out


class _GpuSampler:
    """nvidia-smi's GPU utilisation every 200 ms while the pipeline runs, each sample with its monotonic
    time, so `summary(t0, t1)` covers the frames' window only (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._thread: Any = None
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> _GpuSampler:
        import threading

        # Only the GPU the run uses (the first visible one): on a host with several, the others' idle
        # samples would halve the mean.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        gpu = visible if visible.isdigit() else "0"
        try:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={gpu}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            head = line.strip().split(",")[0]
            if head.replace(".", "", 1).isdigit():
                self.samples.append((time.monotonic(), float(head)))

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(2)

    def summary(self, start: float, end: float) -> dict[str, float] | None:
        busy = [v for t, v in self.samples if start <= t <= end]
        if not busy:
            return None
        return {"mean": round(float(np.mean(busy)), 1), "p50": round(float(np.median(busy)), 1),
                "max": round(float(np.max(busy)), 1), "samples": len(busy)}  # fmt: skip


def run_pipeline(
    settings: Any,
    frames: int,
    det_batch: int | None,
    det_precision: str | None,
    stage_log: Path,
    det_device: str | None = None,
    streams: int = 1,
) -> dict[str, Any]:
    """Run the real pipeline (assembly API) to the end of `frames` frames a stream; summary plus what
    _FrameLog saw."""
    from app.cameras import CameraConfig
    from app.pipeline.supervisor import Supervisor
    from app.stages.assembly import build_graph

    names = ["default"] if streams == 1 else [f"cam{i + 1:02d}" for i in range(streams)]
    cameras = [CameraConfig(name, str(settings.video_source)) for name in names]
    graph = build_graph(settings, cameras, max_frames=frames, det_max_batch=det_batch,
                        det_precision=det_precision, det_device=det_device)  # fmt: skip
    supervisor = Supervisor(graph, ring_slots=settings.ring_slots, log_level="INFO", summary_every_s=5.0,
                            slow_call_ms=settings.slow_call_ms)  # fmt: skip
    frame_log = _FrameLog(supervisor.metrics.add)
    supervisor.metrics.add = frame_log  # type: ignore[method-assign]
    # The stage processes inherit fd 2: their INFO lines (model load, recognition counters) go to the log.
    stage_log.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    with open(stage_log, "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            with _CpuSampler() as cpu, _GpuSampler() as gpu:
                parent_start = time.process_time()
                result = supervisor.run()
                parent_s = time.process_time() - parent_start
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    if result.error is not None or result.summary is None:
        raise UserError(f"the pipeline did not run: {result.error or result.stop_reason} (log: {stage_log})")
    out = dict(result.summary)
    out["fps_steady"] = frame_log.steady_fps()
    out["end_to_end_steady_ms"] = frame_log.steady_latency()
    out["det_batch"] = frame_log.detect_batches()
    out["dropped_steady"] = frame_log.dropped_steady()
    out["timeline"] = frame_log.timeline()
    out["startup"] = frame_log.timeline(0.1, steps_at_most=10)  # the first second, finer
    out["exit_code"] = result.exit_code
    # Between the first and the last finished frame: model loading and shutdown left out.
    done = sorted(frame_log.done)
    out["gpu_util_percent"] = gpu.summary(done[0], done[-1]) if done else None
    out["stage_cpu_percent"] = cpu.percent(done[0], done[-1]) if done else {}
    text = stage_log.read_text(errors="replace")
    out["stage_cpu_ms_per_frame"] = stage_cpu_per_frame(text, int(out.get("frames") or 0))
    if out.get("frames"):
        # The parent process: the supervisor (its watch loop, every frame's metrics) and this benchmark's
        # samplers, start-up and shutdown included.
        out["parent_cpu_ms_per_frame"] = round(parent_s / int(out["frames"]) * 1e3, 3)
    embedding = EMBEDDING_LINE.search(text)
    if embedding:
        faces, batches = int(embedding.group(1)), int(embedding.group(2))
        out["embed_worker"] = {
            "faces": faces,
            "batches": batches,
            "faces_per_batch": float(embedding.group(3)),
        }
    match = RECOGNITION_LINE.search(text)
    if match:
        tracks, embedded, named, relinked, cuts = (int(v) for v in match.groups())
        out["recognition"] = {
            "tracks": tracks,
            "faces_embedded": embedded,
            "named": named,
            "scene_cuts": cuts,
        }
        if out.get("frames"):
            out["recognition"]["embedded_per_frame"] = round(embedded / int(out["frames"]), 3)
    return out


def stage_cpu_per_frame(text: str, frames: int) -> dict[str, dict[str, float]]:
    """Each process's CPU per frame it handled, from the stage log's CPU lines (`app.pipeline.cpu_meter`):
    `cpu` all of it, `model` inside its model calls (capture: the decoder's read), `outside_model` the rest
    (the process's own loop). The embedding worker handles no frames: its figures are per frame of the run.
    """
    from app.pipeline.cpu_meter import parse_cpu_lines

    out = {}
    for node, cpu in sorted(parse_cpu_lines(text).items()):
        items = cpu.items if cpu.items else frames
        if items <= 0:
            continue
        out[node] = {
            "cpu": round(cpu.loop_s / items * 1e3, 3),
            "model": round(cpu.model_s / items * 1e3, 3),
            "outside_model": round((cpu.loop_s - cpu.model_s) / items * 1e3, 3),
            "items": items,
        }
    return out


# -- model-only ceiling -------------------------------------------------------------------------------------


def _rate(fn: Any, items: int, sync: Any = None, min_s: float = 1.0, max_iters: int = 500) -> float:
    """items per second of fn() after warm-up, over at least min_s seconds (or max_iters calls)."""
    for _ in range(3):
        fn()
    if sync:
        sync()
    iters, start = 0, time.perf_counter()
    while iters < max_iters and (iters < 3 or time.perf_counter() - start < min_s):
        fn()
        iters += 1
    if sync:
        sync()
    return items * iters / (time.perf_counter() - start)


def read_frames(clip: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def decode_fps(clip: Path, n: int = 300) -> float:
    """Frames/s of OpenCV decoding the clip in one process, as the capture stage reads it."""
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    cap.read()
    count, start = 0, time.perf_counter()
    while count < n and cap.read()[0]:
        count += 1
    elapsed = time.perf_counter() - start
    cap.release()
    return round(count / elapsed, 1) if elapsed > 0 else 0.0


def ring_copy_ms(frame: np.ndarray) -> float:
    """One frame copied into shared memory, as capture does after decoding (np.copyto into its slot)."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=frame.nbytes * 4)
    try:
        slots = np.ndarray((4, *frame.shape), np.uint8, shm.buf)
        for i in range(4):
            np.copyto(slots[i], frame)  # first touch of the pages
        start, n = time.perf_counter(), 40
        for i in range(n):
            np.copyto(slots[i % 4], frame)
        ms = (time.perf_counter() - start) / n * 1e3
        del slots
        return round(ms, 3)
    finally:
        shm.close()
        shm.unlink()


def model_only(
    backend: str,
    detector: Path,
    embedder: Path,
    kind: str,
    frames: list[np.ndarray],
    det_batch: int,
    det_precision: str | None,
    det_threads: int,
    embed_threads: int,
    faces: float,
    det_size: int,
    embedded_per_frame: float | None = None,
    compile_graphs: bool = False,
) -> dict[str, Any]:
    """Detector images/s and embedder faces/s on `backend`, in this process; see the module docstring.

    fps: 1 / (1/detector + embedded_per_frame/embedder), the faces this run embedded per frame (all faces
    when not known); fps_all_faces: every face embedded on every frame.
    """
    from app.inference.spec import embedder_spec_for
    from app.vision.retinaface import fitted_input_hw, letterbox

    # The input the detection stage runs at: fitted to the clip's frames unless the model fixes it.
    fitted = fitted_input_hw([frames[0].shape[:2]], det_size)
    face_batch = max(1, round(faces))
    out: dict[str, Any] = {"det_batch": det_batch, "face_batch": face_batch}
    batch_frames = (frames * det_batch)[:det_batch]
    if backend == "torch":
        import torch

        from app.inference.torch_backend import TorchModel
        from app.stages.gpu_detect import TorchDetector

        det = TorchDetector(
            detector,
            det_size,
            max_batch=det_batch,
            precision=det_precision,
            threads=det_threads,
            compile_graphs=compile_graphs,
        )
        if det.model.inputs[0].fixed_hw is None:
            det.refit(fitted)
        else:
            det.warmup()
        out["detector_input_hw"] = list(det.input_hw)
        sync = torch.cuda.synchronize if det.device.type == "cuda" else None
        h, w = det.input_hw
        for b in sorted({1, det_batch}):
            x = torch.randn((b, 3, h, w), device=det.device, dtype=det.model.dtype) * 50
            out[f"detector_per_s_b{b}"] = round(_rate(lambda x=x: det.model.run_torch(x), b, sync), 1)
        # The stage's GPU path on real frames: upload from page-locked memory, letterbox, model, compaction.
        block = _page_locked_block(batch_frames)
        det.register_ring(block[0], len(block))
        out["detector_path_zero_copy"] = det.uploader.zero_copy
        out["detector_path_per_s"] = round(_rate(lambda: det.detect(list(block)), det_batch, sync), 1)
        out["detector_precision"] = det.precision
        det.close()
        emb = TorchModel(embedder)
        spec = embedder_spec_for(embedder, kind, emb)
        for b in sorted({1, face_batch}):
            chips = torch.randn((b, 3, spec.input_size[1], spec.input_size[0]), device=emb.device)
            out[f"embedder_per_s_b{b}"] = round(_rate(lambda c=chips: emb.run_torch(c), b, sync), 1)
        out["embedder_precision"] = emb.precision
    else:
        from app.inference.backend import load_model

        det_model = load_model(detector, backend, det_threads)
        hw = det_model.inputs[0].fixed_hw or fitted
        out["detector_input_hw"] = list(hw)
        blobs = np.stack([letterbox(f, hw)[0] for f in batch_frames])
        for b in sorted({1, det_batch}):
            out[f"detector_per_s_b{b}"] = round(_rate(lambda x=blobs[:b]: det_model.run(x), b, min_s=2.0), 2)
        frame = batch_frames[0]
        out["cpu_letterbox_ms"] = round(1e3 / _rate(lambda: letterbox(frame, hw), 1, min_s=0.5), 3)
        emb_model = load_model(embedder, backend, embed_threads)
        spec = embedder_spec_for(embedder, kind, emb_model)
        rng = np.random.default_rng(0)
        for b in sorted({1, face_batch}):
            chips = spec.preprocess(
                rng.integers(0, 255, (b, spec.input_size[1], spec.input_size[0], 3), np.uint8)
            )
            out[f"embedder_per_s_b{b}"] = round(_rate(lambda c=chips: emb_model.run(c), b, min_s=2.0), 2)
    det_rate = out[f"detector_per_s_b{det_batch}"]
    emb_rate = out[f"embedder_per_s_b{face_batch}"]
    out["fps_all_faces"] = round(1.0 / (1.0 / det_rate + faces / emb_rate), 2)
    if embedded_per_frame is not None:
        out["fps"] = round(1.0 / (1.0 / det_rate + embedded_per_frame / emb_rate), 2)
    else:
        out["fps"] = out["fps_all_faces"]
    return out


def _page_locked_block(frames: list[np.ndarray]) -> np.ndarray:
    """Frames copied into one page-aligned anonymous mapping (like the ring), for cudaHostRegister."""
    import mmap

    shape = (len(frames), *frames[0].shape)
    buf = mmap.mmap(-1, int(np.prod(shape)))
    block = np.ndarray(shape, np.uint8, buf)
    block[:] = np.stack(frames)
    return block


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m testbench.bench_pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt"))
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="RetinaFace ONNX")
    p.add_argument("--embedder", type=Path, default=DEFAULT_EMBEDDER, help="embedder ONNX")
    p.add_argument("--embedder-kind", default="auto", choices=("auto", "dlib", "arcface"))
    p.add_argument("--source", type=Path, help="video file (default: a generated clip of --resolution)")
    p.add_argument("--resolution", default="1080p", choices=sorted(RESOLUTIONS), help="of the generated clip")
    p.add_argument("--faces", type=int, default=10, help="faces per frame of the generated 1080p clip")
    p.add_argument("--frames", type=int, default=600, help="frames the pipeline processes (per stream)")
    p.add_argument("--streams", type=int, default=1, help="cameras at once (copies of the clip)")
    p.add_argument("--live", action="store_true", help="pace every stream at its FPS instead of full speed")
    p.add_argument("--live-fps", type=float, default=0.0, help="with --live: this FPS (0 = the clip's)")
    p.add_argument(
        "--result-lag", type=int, default=1, help="RESULT_LAG setting (files: frames an answer waits)"
    )
    p.add_argument("--decoder", default="auto", choices=("auto", "ffmpeg", "nvdec"), help="DECODER setting")
    p.add_argument("--codec", default="as-made", choices=("as-made", "h264"), help="h264: re-encode the clip")
    p.add_argument(
        "--keep-unknown",
        action="store_true",
        help="keep unknown faces as a run does by default (off here: it has its own benchmark, "
        "testbench/eval_unknowns.py, and holds tracking to one lane)",
    )
    p.add_argument("--det-batch", type=int, help="detection stage max batch (default: the stage's)")
    p.add_argument("--det-precision", choices=("auto", "fp16", "fp32"), help="torch detector precision")
    p.add_argument("--det-device", help="run the detection stage's torch path on this device (cpu: test it)")
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--ring-slots", type=int, help="frame ring slots (default: 8 on CPU, 32 with torch)")
    p.add_argument("--threads", type=int, default=0, help="THREADS setting (0 = automatic)")
    p.add_argument("--raw-detector", action="store_true", help="no guided composite for random weights")
    p.add_argument("--skip-model-only", action="store_true")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "out" / "bench_pipeline", help="inputs and logs")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--label", default="", help="free text stored in the JSON")
    return p.parse_args(argv)


def _ring_slots(asked: int | None, backend: str, frame_bytes: int, held: int = 0) -> int:
    """Enough frames in flight for GPU batches, within what /dev/shm can hold (with room to spare) beside
    the `held` slots a file's ring gets on top (NAME_LOOKAHEAD); `frame_bytes`: a frame of every stream."""
    if asked is not None:
        return asked
    want = 32 if backend == "torch" else 8
    try:
        stat = os.statvfs("/dev/shm")
        fits = int(stat.f_bavail * stat.f_frsize * 0.5 // frame_bytes) - held
    except OSError:
        return min(want, 8)
    return max(3, min(want, fits))


def _device_name(backend: str) -> str:
    if backend == "torch":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except ImportError:
            pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = bench(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line, flush=True)
    return 0 if result.get("exit_code", 0) == 0 else 1


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from app.config import load_settings
    from app.stages.assembly import inference_threads

    if args.frames < 10:
        raise UserError("--frames must be at least 10")
    if not 1 <= args.streams <= 64:
        raise UserError("--streams must be between 1 and 64")
    for path in (args.detector, args.embedder):
        if not path.is_file():
            raise UserError(f"model file {path} does not exist; check --detector/--embedder")
    work = args.work
    clip = args.source or ensure_clip(args.resolution, args.frames, work, args.faces)
    if not clip.is_file():
        raise UserError(f"video file {clip} does not exist; check --source")
    if args.codec == "h264":
        clip = ensure_h264(clip)
    detector, note = args.detector, "as given"
    if is_random_weights(args.detector) and not args.raw_detector:
        detector = guided_detector(
            args.detector, DEFAULT_DETECTOR, work / f"guided-{args.detector.stem}.onnx"
        )
        note = f"random-weight {args.detector.name} computed in full, detections of {DEFAULT_DETECTOR.name}"
    gallery = ensure_gallery(args.embedder, args.embedder_kind, work)
    sample = read_frames(clip, 16)
    if not sample:
        raise UserError(f"no frame could be read from {clip}")
    h, w = sample[0].shape[:2]
    faces = faces_per_frame(clip, args.frames) if clip.with_suffix(".gt.json").is_file() else float("nan")
    held = 0 if args.live else load_settings({}, env_file=None).name_lookahead  # a file ring's extra slots
    slots = _ring_slots(args.ring_slots, args.backend, sample[0].nbytes * args.streams, held)
    overrides = {
        "video_source": str(clip),
        "detector_model": str(detector),
        "embedder_model": str(args.embedder),
        "embedder": args.embedder_kind,
        "backend": args.backend,
        "det_size": args.det_size,
        "qdrant_path": str(gallery),
        "max_speed": not args.live,
        "fps_target": args.live_fps if args.live else 0.0,
        # --live plays the clip as a live camera: newest frame wins, tracking never waits for answers.
        "live_files": args.live,
        "result_lag": args.result_lag,
        "decoder": args.decoder,
        "keep_unknown": args.keep_unknown,
        "gui": False,
        "ring_slots": slots,
        "threads": args.threads,
    }
    settings = load_settings(overrides, env_file=None)
    load_before = os.getloadavg()
    log(
        f"pipeline: {args.backend}, {detector.name} + {args.embedder.name}, {clip.name}, {args.frames} frames"
    )
    started = time.perf_counter()
    stage_log = work / "stage_log.txt"
    run = run_pipeline(settings, args.frames, args.det_batch, args.det_precision, stage_log, args.det_device,
                       args.streams)  # fmt: skip
    per_stream = run.get("cameras", {})
    rates = [c["fps"] for c in per_stream.values()]
    load_after = os.getloadavg()
    det_threads, embed_threads = inference_threads(settings)
    result: dict[str, Any] = {
        "label": args.label,
        "streams": args.streams,
        "live": args.live,
        "result_lag": args.result_lag,
        "decoder": args.decoder,
        "decode_threads": settings.decode_threads,
        "fps": run["fps"],
        "fps_per_stream_min": min(rates) if rates else None,
        "fps_per_stream_max": max(rates) if rates else None,
        "per_stream": per_stream,
        "gpu_util_percent": run["gpu_util_percent"],
        "embed_worker": run.get("embed_worker"),
        "fps_steady": run["fps_steady"],
        "end_to_end_steady_ms": run["end_to_end_steady_ms"],
        "latency_ms": run["latency_ms"],
        "queue_wait_ms": run["queue_wait_ms"],
        "backend": args.backend,
        "models": {
            "detector": args.detector.name,
            "detector_note": note,
            "embedder": args.embedder.name,
            "embedder_kind": args.embedder_kind,
            "det_precision": args.det_precision or "auto",
            "torch_compile": settings.torch_compile,
            "torch_compile_batches": settings.torch_compile_batches,
        },
        "resolution": f"{w}x{h}",
        "source": clip.name,
        "codec": _fourcc(clip),
        "frames": run["frames"],
        "dropped": run["dropped"],
        "dropped_steady": run.get("dropped_steady"),
        "elapsed_s": run["elapsed_s"],
        "stop_reason": run["stop_reason"],
        "exit_code": run["exit_code"],
        "faces_per_frame": round(faces, 2) if faces == faces else None,
        "det_batch": run["det_batch"],
        "stage_cpu_percent": run["stage_cpu_percent"],
        "stage_cpu_ms_per_frame": run["stage_cpu_ms_per_frame"],
        "parent_cpu_ms_per_frame": run.get("parent_cpu_ms_per_frame"),
        "recognition": run.get("recognition"),
        "timeline": run.get("timeline"),
        "startup": run.get("startup"),
        "ring_slots": slots,
        "name_lookahead": held,  # a file camera's ring holds ring_slots + this
        "embed_gather_ms": settings.embed_gather_ms,
        "threads": {"detector": det_threads, "embedder": embed_threads},
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "device": _device_name(args.backend),
        "python": platform.python_version(),
        "pipeline_wall_s": round(time.perf_counter() - started, 1),
    }
    result["decode_fps_one_process"] = decode_fps(clip)
    result["ring_copy_ms"] = ring_copy_ms(sample[0])
    if not args.skip_model_only:
        log("model-only ceiling")
        stage_batch = args.det_batch or _stage_default_batch(args.backend)
        ceiling = model_only(
            args.backend, detector, args.embedder, args.embedder_kind, sample, stage_batch,
            args.det_precision, det_threads, embed_threads, faces if faces == faces else 1.0, args.det_size,
            (run.get("recognition") or {}).get("embedded_per_frame"), settings.torch_compile,
        )  # fmt: skip
        result["model_only_fps"] = ceiling.pop("fps")
        result["detector_ceiling_fps"] = ceiling.get(
            "detector_path_per_s", ceiling.get(f"detector_per_s_b{stage_batch}")
        )
        result["model_only"] = ceiling
    else:
        result["model_only_fps"] = result["detector_ceiling_fps"] = None
    return result


def _stage_default_batch(backend: str) -> int:
    from app.stages.detect import DEFAULT_MAX_BATCH, GPU_MAX_BATCH

    gpu = backend == "torch" and _device_name(backend) != (platform.processor() or platform.machine())
    return GPU_MAX_BATCH if gpu else DEFAULT_MAX_BATCH


def _fourcc(clip: Path) -> str:
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    cap.release()
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") or "?"


if __name__ == "__main__":
    sys.exit(main())
