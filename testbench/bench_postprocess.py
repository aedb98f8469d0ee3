"""Post-processing microbenchmark: CPU per frame of the post-processing stage alone, on real detector output.

    python -m testbench.bench_postprocess                   # 1080p clip, 10 faces, 300 frames, 5 passes
    python -m testbench.bench_postprocess --frames 300 --passes 7 --profile 20

The stage (RetinaFace candidate decoding, score filter, NMS, minimum face size) runs once per frame of every
camera. This runs only its `process()` on the `CandidateDetections` the real detector gives on the benchmark
clip (made once and cached under --work, as `bench_lane` caches its detections), timed with the thread's CPU
clock; each pass is a fresh stage on the same inputs, the figure the median pass.

The last stdout line is one JSON object: `post_cpu_ms_per_frame` (median pass), `passes_ms`,
`post_cpu_ms_per_frame_min`, `frames`, `candidates_per_frame` (rows the detector handed over),
`faces_per_frame`, `outputs_digest` (of every frame's boxes, scores and landmarks, bytes as they are: equal
digests, bit-identical outputs); with --profile N the top N functions of a cProfile of one extra pass
(internal time) go to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pickle
import pstats
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from app.models.paths import REPO_ROOT
from testbench.bench_lane import detected, log, timed
from testbench.bench_pipeline import ensure_clip


def candidates(settings: Any, clip: Path, count: int, work: Path) -> tuple[list[Any], float, dict, dict]:
    """The detector's raw outputs of the first `count` frames and the stage's thresholds, cached."""
    from app.cameras import CameraConfig, effective_det_threshold, effective_min_face
    from app.tracking.config import TrackerConfig

    low = TrackerConfig.from_settings(settings).low_thresh
    camera = CameraConfig(name="default", source=str(clip))
    threshold = min(effective_det_threshold(camera, settings), low)
    # The stage's arguments as bench_lane (and the pipeline) build them.
    stage_args = (min(settings.det_threshold, low), {0: threshold}, {0: effective_min_face(camera, settings)})
    cache = work / f"post-candidates-{clip.stem}-{count}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes()), *stage_args
    log(f"detecting {count} frames of {clip.name} (cached as {cache.name})")
    out = detected(settings, clip, count, threshold)
    cache.write_bytes(pickle.dumps(out, pickle.HIGHEST_PROTOCOL))
    return out, *stage_args


def one_pass(stage_args: tuple, nms_threshold: float, raws: list[Any], profile: cProfile.Profile | None):
    """A fresh stage over the inputs: (CPU seconds of its process() calls, every frame's output)."""
    from app.stages.postprocess import PostprocessStage

    floor, thresholds, min_faces = stage_args
    stage = PostprocessStage(floor, nms_threshold, thresholds, min_faces)
    stage.setup()
    spent, outputs = 0.0, []
    for raw in raws:
        took, [found] = timed(stage.process, raw, profile)
        spent += took
        outputs.append(found)
    stage.close()
    return spent, outputs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m testbench.bench_postprocess", description=__doc__.split("\n")[0]
    )
    p.add_argument("--source", type=Path, help="video file (default: the generated 1080p clip)")
    p.add_argument("--faces", type=int, default=10, help="faces per frame of the generated clip")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--passes", type=int, default=5, help="timed passes (each a fresh stage)")
    p.add_argument("--profile", type=int, default=0, help="print the top N functions of a profiled pass")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "out" / "bench_pipeline", help="inputs")
    p.add_argument("--label", default="", help="free text stored in the JSON")
    args = p.parse_args(argv)

    from app.config import load_settings

    clip = args.source or ensure_clip("1080p", args.frames, args.work, args.faces)
    settings = load_settings({"video_source": str(clip), "gui": False, "threads": 1}, env_file=None)
    raws, *stage_args = candidates(settings, clip, args.frames, args.work)
    passes = [one_pass(tuple(stage_args), settings.nms_threshold, raws, None) for _ in range(args.passes)]
    outputs = passes[0][1]
    digest = hashlib.sha1()
    for found in outputs:
        for array in (found.boxes, found.scores, found.landmarks):
            digest.update(repr((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    if args.profile:
        profile = cProfile.Profile()
        one_pass(tuple(stage_args), settings.nms_threshold, raws, profile)
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.profile)
        log(text.getvalue())
    frames = len(raws)
    per_frame = [1000.0 * spent / frames for spent, _ in passes]
    result = {
        "label": args.label,
        "source": clip.name,
        "frames": frames,
        "candidates_per_frame": round(float(np.mean([len(r.conf) for r in raws])), 1),
        "faces_per_frame": round(float(np.mean([len(f.scores) for f in outputs])), 2),
        "passes_ms": [round(v, 3) for v in per_frame],
        "post_cpu_ms_per_frame": round(statistics.median(per_frame), 3),
        "post_cpu_ms_per_frame_min": round(min(per_frame), 3),  # the least disturbed pass
        "outputs_digest": digest.hexdigest()[:12],
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
