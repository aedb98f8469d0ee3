"""FPS of the same pipeline command with and without MQTT + /metrics on (a real mosquitto on loopback).

    python testbench/bench_integrations.py --gallery G [--source CLIP] [--pairs 3] [--max-frames N]

Runs `python -m app.main --source CLIP --no-gui --max-speed --gallery G` `--pairs` times each way,
alternating (plain, integrations, plain, ...) so that load from other jobs falls on both alike; with
integrations: MQTT_HOST/MQTT_PORT at a broker this script starts, METRICS_PORT on a free port. The last line
is JSON: every run's fps and frames, and the medians. Needs Debian's mosquitto (/usr/sbin/mosquitto).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.mosquitto import MosquittoBroker, free_port  # noqa: E402
from tests.support.shared_data import SHARED_FACES  # noqa: E402

KINDS = ("plain", "mqtt+metrics")


def run_once(args: argparse.Namespace, env: dict[str, str]) -> dict:
    command = [sys.executable, "-m", "app.main", "--env-file", os.devnull, "--source", str(args.source),
               "--no-gui", "--max-speed", "--gallery", str(args.gallery)]  # fmt: skip
    if args.max_frames:
        command += ["--max-frames", str(args.max_frames)]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"error: the pipeline failed: {result.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(result.stdout.splitlines()[-1])
    return {"fps": summary["fps"], "frames": summary["frames"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=Path, required=True, help="gallery folder (enroll people first)")
    p.add_argument("--source", type=Path, default=SHARED_FACES / "short_hamilton_clip.mp4")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--max-frames", type=int, default=0, help="0 = the whole clip")
    args = p.parse_args()
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    with MosquittoBroker() as broker:
        for _ in range(args.pairs):
            for kind in KINDS:
                env = {}
                if kind != "plain":
                    env = {"FACEPIPE_MQTT_HOST": "127.0.0.1", "FACEPIPE_MQTT_PORT": str(broker.port),
                           "FACEPIPE_METRICS_PORT": str(free_port())}  # fmt: skip
                runs[kind].append(run_once(args, env))
                print(kind, runs[kind][-1], flush=True)
    medians = {kind: round(statistics.median(r["fps"] for r in runs[kind]), 2) for kind in KINDS}
    print(json.dumps({"runs": runs, "median_fps": medians, "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
