"""/metrics: read at scrape time from the PipelineMetrics the JSON summary is made of; Prometheus names;
no person names; a port in use is one line."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import load_settings
from app.errors import UserError
from app.integrations.prometheus import IntegrationReading, MetricsServer, PipelineCollector, PipelineReading
from app.integrations.runtime import Integrations
from app.pipeline.messages import FrameMeta, StageStamp
from app.pipeline.metrics import PipelineMetrics, StreamMetrics
from tests.support.mosquitto import free_port

STAGES = ["capture", "detect", "recognize", "gui"]


def frame(index: int, faces: int, recognitions: tuple[str, ...] = ()) -> FrameMeta:
    t = 100.0 + index * 0.04
    meta = FrameMeta(0, index + 1, index, index / 25, 64, 48, faces=faces, recognitions=recognitions)
    meta.stamps = [StageStamp(s, t + i * 0.01, t + i * 0.01 + 0.003 * (i + 1)) for i, s in enumerate(STAGES)]
    return meta


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {labels as sorted items: value}}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def served():
    metrics = PipelineMetrics(STAGES)
    reading = PipelineReading(metrics=metrics, dropped=3, queue_depths={"capture->detect": 2},
                              gallery_persons=2, gallery_embeddings=5)  # fmt: skip
    health = IntegrationReading(mqtt_connected=True, mqtt_sent=4, mqtt_dropped=1, mqtt_buffered=0)
    collector = PipelineCollector("porch", lambda: reading, lambda: health, {"backend": "onnxruntime"})
    server = MetricsServer(free_port(), collector, address="127.0.0.1")
    server.start()
    yield server, metrics
    server.stop()


def test_counters_agree_with_the_summary(served):
    server, metrics = served
    for i in range(10):
        metrics.add(frame(i, faces=2, recognitions=("known", "unknown") if i == 3 else ()))
    summary = metrics.summary(dropped=3, stop_reason="end of stream")
    got = scrape(server.port)
    cam = (("camera", "porch"),)
    assert got["facepipe_frames_total"][cam] == summary["frames"] == 10
    assert got["facepipe_dropped_frames_total"][cam] == summary["dropped"] == 3
    assert got["facepipe_faces_total"][cam] == summary["faces"] == 20
    for status in ("known", "unknown"):
        key = (("camera", "porch"), ("status", status))
        assert got["facepipe_recognitions_total"][key] == summary["recognitions"][status] == 1
    assert got["facepipe_processed_fps"][cam] == pytest.approx(summary["fps"], abs=0.01)
    detect = (("camera", "porch"), ("stage", "detect"))
    assert got["facepipe_stage_latency_seconds_count"][detect] == 10
    assert got["facepipe_stage_latency_seconds_sum"][detect] == pytest.approx(10 * 0.006)
    buckets = got["facepipe_stage_latency_seconds_bucket"]
    bucket = lambda stage, le: buckets[(("camera", "porch"), ("le", le), ("stage", stage))]  # noqa: E731
    assert bucket("detect", "0.005") == 0 and bucket("detect", "0.01") == 10
    assert bucket("end_to_end", "+Inf") == 10
    assert got["facepipe_queue_depth"][(("queue", "capture->detect"),)] == 2
    assert got["facepipe_gallery_persons"][()] == 2 and got["facepipe_gallery_embeddings"][()] == 5
    assert got["facepipe_gallery_available"][()] == 1
    assert got["facepipe_mqtt_connected"][()] == 1 and got["facepipe_mqtt_events_dropped_total"][()] == 1
    assert got["facepipe_build_info"][(("backend", "onnxruntime"), ("version", "0.1.0"))] == 1


def test_names_follow_prometheus_conventions_and_carry_no_person(served):
    server, metrics = served
    metrics.add(frame(0, faces=1, recognitions=("known",)))
    got = scrape(server.port)
    assert all(name.startswith("facepipe_") for name in got)
    labels = {key for samples in got.values() for labels in samples for key, _ in labels}
    assert labels <= {"camera", "stage", "status", "queue", "le", "backend", "version"}


def test_a_metrics_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        collector = PipelineCollector("default", PipelineReading, IntegrationReading, {})
        with pytest.raises(UserError) as info:
            MetricsServer(port, collector, address="127.0.0.1").start()
    expected = f"FACEPIPE_METRICS_PORT={port} is in use; choose another port, or stop what listens there"
    assert str(info.value) == expected


def camera_frame(stream: int, index: int, faces: int) -> FrameMeta:
    meta = frame(index, faces)
    meta.stream = stream
    return meta


class RunningSupervisor:
    """What the runtime reads of a running supervisor: its metrics and its non-blocking live view."""

    def __init__(self, metrics: StreamMetrics, dropped: dict[int, int]) -> None:
        self.metrics = metrics
        self.dropped = dropped

    def live_view(self) -> dict:
        by_stream = dict(self.dropped)
        return {"dropped": sum(by_stream.values()), "dropped_by_stream": by_stream, "queues": {}, "ready": {}}


def test_several_cameras_have_one_series_each_and_no_double_counted_total():
    metrics = StreamMetrics(STAGES, ["door", "yard"])
    metrics.start(100.0)
    for i in range(6):
        metrics.add(camera_frame(0, i, faces=1))
    for i in range(4):
        metrics.add(camera_frame(1, i, faces=3))
    settings = load_settings({"metrics_port": free_port()}, env_file=None)
    integrations = Integrations(settings, camera="door", cameras=["door", "yard"])
    integrations.start()
    try:
        integrations.attach(RunningSupervisor(metrics, {0: 2, 1: 5}))
        got = scrape(settings.metrics_port)
    finally:
        integrations.stop()
    door, yard = (("camera", "door"),), (("camera", "yard"),)
    assert got["facepipe_frames_total"] == {door: 6, yard: 4}
    assert got["facepipe_faces_total"] == {door: 6, yard: 12}
    assert got["facepipe_dropped_frames_total"] == {door: 2, yard: 5}
    e2e = lambda camera: (("camera", camera), ("stage", "end_to_end"))  # noqa: E731
    assert got["facepipe_stage_latency_seconds_count"][e2e("door")] == 6
    assert got["facepipe_stage_latency_seconds_count"][e2e("yard")] == 4
    assert set(got["facepipe_processed_fps"]) == {door, yard}
