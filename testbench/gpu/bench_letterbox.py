"""The detector's GPU letterbox, frame by frame against the batch at once: wall and CPU time a batch.

    python -m testbench.gpu.bench_letterbox [--out FILE] [--repeats 50]

1080p frames already on the device (as the detector's uploads leave them), NV12 and BGR, letterboxed to
the 16:9 detector input (384x640) in fp16 for batch sizes 1, 4, 8, 16, 32: `frame_by_frame` calls the
letterbox once a frame (the kernels of each frame launched on their own, as before the batching),
`batched` once a batch. Times are the median of --repeats calls, each synchronised (wall) and the calling
thread's CPU clock (CPU: the launches). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from app.vision import gpu_preprocess
from app.vision.pixel_format import bgr_to_nv12

BATCHES = (1, 4, 8, 16, 32)


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one synchronised call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.thread_time() - c0)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (1080, 1920, 3), np.uint8)
    sources = {"bgr": bgr, "nv12": bgr_to_nv12(bgr)}
    fns = {"bgr": gpu_preprocess.letterbox_batch, "nv12": gpu_preprocess.letterbox_nv12_batch}
    rows = []
    for fmt, frame in sources.items():
        fn = fns[fmt]
        for n in BATCHES:
            frames = torch.from_numpy(np.stack([frame] * n)).to(device)
            out = torch.empty((n, 3, 384, 640), dtype=dtype, device=device)

            def one_by_one(frames=frames, out=out, fn=fn) -> None:
                for i in range(frames.shape[0]):
                    fn(frames[i : i + 1], (384, 640), dtype=dtype, out=out[i : i + 1])

            def batched(frames=frames, out=out, fn=fn) -> None:
                fn(frames, (384, 640), dtype=dtype, out=out)

            row: dict[str, object] = {"format": fmt, "batch": n}
            for name, call in (("frame_by_frame", one_by_one), ("batched", batched)):
                wall, cpu = _time(call, device, args.repeats)
                row[f"{name}_wall_ms"] = round(wall, 3)
                row[f"{name}_cpu_ms"] = round(cpu, 3)
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "input_hw": [384, 640], "rows": rows}
    line = json.dumps(result)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
