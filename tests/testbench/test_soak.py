"""testbench/soak.py: a tiny soak (20 s) and 3 start/stop cycles of the real pipeline leave nothing behind and
report what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "testbench" / "soak.py"
STAGES = {f"fp-{s}" for s in ("capture", "detect", "postprocess", "recognize", "gui")}

pytestmark = pytest.mark.slow


def run_soak(*argv: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        [sys.executable, str(SOAK), "--clip-seconds", "4", *argv],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result, json.loads(result.stdout.splitlines()[-1])


def test_tiny_soak_samples_every_process_and_shm():
    result, report = run_soak("--minutes", str(20 / 60), "--every", "2", "--warmup", "4", timeout=240)
    assert report["mode"] == "soak" and report["samples"] >= 9  # 0, 2, ... 20 s
    rss = report["rss_kb"]
    assert STAGES | {"main"} <= set(rss)
    for name in STAGES | {"main"}:
        assert 10_000 < rss[name]["start"] <= rss[name]["max"] < 2_000_000, (name, rss[name])
        assert rss[name]["end"] - rss[name]["start"] < 50_000, (name, rss[name])  # no visible leak in 16 s
    assert 0 < report["ring_bytes"]["max"] <= report["ring_bytes"]["nominal"]
    pipeline = report["pipeline"]
    assert pipeline["exit_code"] == 130 and pipeline["stop_reason"] == "interrupted (Ctrl-C)"
    assert pipeline["frames"] > 50 and pipeline["fps"] <= 10.5  # capped by --fps-target 10
    assert report["leftover_processes"] == 0 and report["leftover_shm_segments"] == 0
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["t_s", "main", "capture"] and len(table) >= report["samples"] + 3


def test_three_start_stop_cycles_leave_no_process_and_no_segment():
    result, report = run_soak("--cycles", "3", "--cycle-seconds", "0.5", timeout=240)
    assert report["mode"] == "cycles" and report["cycles"] == 3 and report["clean_exits"] == 3
    assert report["leftover_processes"] == 0 and report["leftover_shm_segments"] == 0
    assert report["processes_per_run"] >= 5  # the five stages (and the resource tracker) were seen
    assert report["stop_s"]["max"] < 2.0
    assert len([line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]) == 3
