"""Cost of the embedded gallery's crash-safe changes and checks at a given size.

    python testbench/bench_gallery_change.py --points 10000 --dim 128

Fills a gallery in a temporary folder with `--points` random embeddings (100 persons), then times one
`add` of 2 embeddings (copy-on-write: sparse copy, write, checksum, atomic commit), one open (with the
integrity check), and a full `verify`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import Settings
from app.gallery import open_gallery
from app.gallery.backup import verify_gallery


@dataclass(frozen=True)
class Spec:
    model_id: str
    dim: int
    metric: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = Spec("dlib-bench", args.dim, "euclidean")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(qdrant_path=Path(tmp), qdrant_collection="faces")
        with open_gallery(settings, spec) as gallery:
            per_person = max(1, args.points // 100)
            for i in range(0, args.points, per_person):
                gallery.add(f"p{i}", rng.normal(size=(min(per_person, args.points - i), args.dim)))
        adds, opens = [], []
        for r in range(args.repeats):
            started = time.perf_counter()
            gallery = open_gallery(settings, spec)
            opens.append(time.perf_counter() - started)
            started = time.perf_counter()
            gallery.add(f"new{r}", rng.normal(size=(2, args.dim)))
            adds.append(time.perf_counter() - started)
            gallery.close()
        started = time.perf_counter()
        verify_gallery(settings)
        verify_s = time.perf_counter() - started
        folder = Path(tmp) / "faces"
        used = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
    print(
        json.dumps(
            {
                "points": args.points,
                "dim": args.dim,
                "add_ms_median": round(1000 * float(np.median(adds)), 1),
                "open_ms_median": round(1000 * float(np.median(opens)), 1),
                "verify_ms": round(1000 * verify_s, 1),
                "disk_mib": round(used / 2**20, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
