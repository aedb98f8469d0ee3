"""The graph's sizing rules: how many FFmpeg threads each camera's capture decodes with."""

from __future__ import annotations

import os

from app.cameras import CameraConfig
from app.config import Settings
from app.stages.assembly import build_graph, decode_threads
from tests.support.shared_data import HAMILTON

CPUS = len(os.sched_getaffinity(0))


def test_one_camera_keeps_ffmpegs_threads_and_several_share_the_cpus() -> None:
    assert decode_threads(Settings(), 1) == 0
    assert decode_threads(Settings(), 2) == max(1, CPUS // 2)
    assert decode_threads(Settings(), 4 * CPUS) == 1
    assert decode_threads(Settings(decode_threads=3), 1) == 3
    assert decode_threads(Settings(decode_threads=3), 16) == 3


def test_the_graphs_captures_get_the_threads() -> None:
    cameras = [CameraConfig(f"cam{i}", str(HAMILTON)) for i in range(3)]
    graph = build_graph(Settings(gui=False), cameras)
    captures = [node.stage for node in graph.nodes if node.name.startswith("capture")]
    assert len(captures) == 3
    assert {stage.decode_threads for stage in captures} == {max(1, CPUS // 3)}
