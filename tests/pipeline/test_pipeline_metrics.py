"""Latency, queue-wait, throughput and the final summary, from frame stamps with known timings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.pipeline.messages import FrameMeta, StageStamp
from app.pipeline.metrics import PipelineMetrics, Reservoir

STAGES = ["capture", "detect", "gui"]


def meta(t0: float, capture_ms: float, wait_ms: float, detect_ms: float, gui_ms: float) -> FrameMeta:
    """A frame read at t0: capture, queue wait, detect, (no wait), gui."""
    c_end = t0 + capture_ms / 1000
    d_start = c_end + wait_ms / 1000
    d_end = d_start + detect_ms / 1000
    g_end = d_end + gui_ms / 1000
    stamps = [
        StageStamp("capture", t0, c_end),
        StageStamp("detect", d_start, d_end),
        StageStamp("gui", d_end, g_end),
    ]
    return FrameMeta(0, 1, 0, 0.0, 8, 6, stamps)


def test_stage_latency_wait_and_end_to_end_percentiles():
    metrics = PipelineMetrics(STAGES)
    metrics.start(100.0)
    detect = np.arange(1, 101, dtype=float)  # 1..100 ms
    for i, d in enumerate(detect):
        metrics.add(meta(100.0 + i * 0.04, capture_ms=2, wait_ms=5, detect_ms=d, gui_ms=3))
    summary = metrics.summary(dropped=4, stop_reason="end of stream")
    lat = summary["latency_ms"]
    assert lat["detect"]["p50"] == pytest.approx(np.percentile(detect, 50), abs=1e-6)
    assert lat["detect"]["p95"] == pytest.approx(np.percentile(detect, 95), abs=1e-6)
    assert lat["capture"] == {"p50": 2.0, "p95": 2.0}
    assert lat["gui"]["p50"] == pytest.approx(3.0)
    # end to end = from capture's end: wait + detect + gui
    assert lat["end_to_end"]["p50"] == pytest.approx(5 + np.percentile(detect, 50) + 3, abs=1e-6)
    assert summary["queue_wait_ms"]["detect"]["p50"] == pytest.approx(5.0)
    assert summary["queue_wait_ms"]["gui"]["p50"] == pytest.approx(0.0, abs=1e-9)
    assert summary["frames"] == 100 and summary["dropped"] == 4 and summary["stop_reason"] == "end of stream"
    # last frame done at 100 + 99*0.04 + 0.002 + 0.005 + 0.1 + 0.003
    elapsed = 99 * 0.04 + 0.110
    assert summary["fps"] == pytest.approx(100 / elapsed, rel=1e-3)
    json.dumps(summary)  # serialisable as the CLI's last line


def test_empty_run_summary_is_valid_json_with_nulls():
    summary = PipelineMetrics(STAGES).summary(dropped=0, stop_reason="interrupted (Ctrl-C)")
    assert summary["frames"] == 0 and summary["fps"] == 0.0
    assert summary["latency_ms"]["end_to_end"] == {"p50": None, "p95": None, "p99": None}
    assert json.loads(json.dumps(summary))["stop_reason"] == "interrupted (Ctrl-C)"


def test_interval_line_reports_the_interval_and_resets():
    metrics = PipelineMetrics(STAGES)
    metrics.start(0.0)
    for i in range(10):
        metrics.add(meta(i * 0.1, 1, 0, 20, 1))
    line = metrics.interval_line(dropped=2, now=2.0)
    assert "frames 10" in line and "5.0 fps" in line and "dropped 2" in line and "detect 20.0" in line
    assert "latency" not in metrics.interval_line(dropped=2, now=3.0)  # nothing new since


def test_reservoir_is_exact_below_capacity_and_bounded_above():
    exact = Reservoir(capacity=1000)
    for v in range(1000):
        exact.add(float(v))
    assert exact.percentiles((50,)) == [pytest.approx(499.5)]
    sampled = Reservoir(capacity=500, seed=1)
    for v in range(20_000):
        sampled.add(float(v))
    assert len(sampled._values) == 500 and sampled.count == 20_000
    p50, p95 = sampled.percentiles((50, 95))
    assert abs(p50 - 10_000) < 1500 and abs(p95 - 19_000) < 800
