"""The decode benchmark's own plumbing, as it ran on the H200 (testbench/gpu/decode_results_h200.jsonl): one
line per mode with the steady and opening CPU, and an NVDEC mode that cannot run here is an error in its
line, not a crash of the run."""

import json
import subprocess
import sys

from tests.support.shared_data import HAMILTON, REPO


def test_each_mode_is_one_line_and_nvdec_without_a_gpu_is_its_error():
    result = subprocess.run(
        [sys.executable, "testbench/gpu/bench_decode.py", "--clip", str(HAMILTON), "--streams", "2",
         "--frames", "5", "--mode-timeout", "60", "--modes", "ffmpeg-t1", "nvdec-nv12-block-cv1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ffmpeg, nvdec, last = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert ffmpeg["mode"] == "ffmpeg-t1" and ffmpeg["frames"] == 10 and "error" not in ffmpeg
    assert ffmpeg["cpu_ms_per_frame_steady"] > 0 and ffmpeg["open_cpu_ms"] > 0 and ffmpeg["fps_steady"] > 0
    assert nvdec["mode"] == "nvdec-nv12-block-cv1" and "PyNvVideoCodec" in nvdec["error"]
    assert last["resolution"] == "640x360" and [r["mode"] for r in last["runs"]] == [
        "ffmpeg-t1",
        nvdec["mode"],
    ]
