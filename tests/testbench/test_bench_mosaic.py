import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "testbench/bench_mosaic.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bench_prints_one_result_per_camera_count_as_its_last_json_line():
    result = bench("--streams", "1", "3", "--size", "320x180", "--repeats", "2")
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["size"] == [320, 180] and [r["streams"] for r in last["results"]] == [1, 3]
    assert last["results"][1]["canvas"] == [642, 362]  # 2x2 grid of 320x180 tiles
    assert all(r["compose_ms"] >= 0 and r["render_ms"] >= 0 for r in last["results"])


def test_bench_refuses_a_bad_size_in_one_line():
    result = bench("--size", "big")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --size 'big' is not WxH (e.g. 1920x1080)"
