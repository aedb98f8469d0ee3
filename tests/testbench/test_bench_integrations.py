"""testbench/bench_integrations.py: both ways run the same frames and report their FPS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bench_runs_both_ways_on_the_same_frames(tmp_path):
    bench = REPO / "testbench" / "bench_integrations.py"
    argv = ["--gallery", str(tmp_path / "empty"), "--pairs", "1", "--max-frames", "20"]
    result = subprocess.run(
        [sys.executable, str(bench), *argv],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert set(report["median_fps"]) == {"plain", "mqtt+metrics"}
    assert all(r == [{"fps": r[0]["fps"], "frames": 20}] and r[0]["fps"] > 0 for r in report["runs"].values())
