"""The graph's sizing rules: how many FFmpeg threads each camera's capture decodes with, how the lanes share
the unknown-face store."""

from __future__ import annotations

import os

from app.cameras import CameraConfig
from app.config import Settings
from app.stages import assembly
from app.stages.assembly import build_graph, decode_threads, detector_workers
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


def test_keeping_unknown_faces_leaves_the_cameras_spread_over_lanes() -> None:
    # The unknown-face store is the embedding worker's: every lane sends it sightings on one queue.
    cameras = [CameraConfig(f"cam{i}", str(HAMILTON)) for i in range(4)]
    graph = build_graph(Settings(gui=False, keep_unknown=True, tracking_workers=2), cameras)
    lanes = [node.stage for node in graph.nodes if node.name.startswith("recognize")]
    (embed,) = [node.stage for node in graph.nodes if node.name == "embed"]
    assert len(lanes) == 2 and embed.lanes == 2 and embed.sightings is not None
    assert {id(lane.channel.sightings) for lane in lanes} == {id(embed.sightings)}
    assert [lane.channel.reply_to for lane in lanes] == [0, 1]
    assert embed.sightings in graph.side_queues
    off = build_graph(Settings(gui=False, keep_unknown=False, tracking_workers=2), cameras)
    (embed_off,) = [node.stage for node in off.nodes if node.name == "embed"]
    assert embed_off.sightings is None


def test_detectors_are_one_per_eight_gpu_cameras_unless_set(monkeypatch) -> None:
    # No NVIDIA driver here: one detector, whatever the backend.
    assert detector_workers(Settings(backend="torch"), 16) == 1
    assert detector_workers(Settings(), 16) == 1
    monkeypatch.setattr(assembly, "cuda_devices", lambda: 1)  # as on a GPU host
    torch = Settings(backend="torch")
    assert [detector_workers(torch, n) for n in (1, 8, 9, 16, 17, 200)] == [1, 1, 2, 2, 3, 8]
    assert detector_workers(torch, 16, det_device="cpu") == 1  # the torch backend on the CPU
    assert detector_workers(Settings(backend="onnxruntime"), 16) == 1  # CPU cores: one detector
    assert detector_workers(Settings(backend="torch", detect_workers=3), 16) == 3  # as set
    assert detector_workers(Settings(detect_workers=3), 2) == 2  # never more than the cameras
    cameras = [CameraConfig(f"cam{i}", str(HAMILTON)) for i in range(9)]
    graph = build_graph(Settings(gui=False, backend="torch"), cameras)
    assert sorted(node.name for node in graph.nodes if node.name.startswith("detect")) == [
        "detect",
        "detect:2",
    ]


def test_captures_keep_nvdec_frames_as_nv12_exactly_for_the_torch_detector() -> None:
    cameras = [CameraConfig(f"cam{i}", str(HAMILTON)) for i in range(2)]

    def formats(**settings: object) -> set[str]:
        graph = build_graph(Settings(gui=False, **settings), cameras)  # type: ignore[arg-type]
        return {node.stage.nvdec_format for node in graph.nodes if node.name.startswith("capture")}

    assert formats() == {"bgr"}  # onnxruntime: the CPU detector would only convert it again
    assert formats(backend="torch") == {"nv12"}
    assert formats(backend="torch", frame_format="bgr") == {"bgr"}
    assert formats(frame_format="nv12") == {"nv12"}
