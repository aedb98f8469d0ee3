"""Prometheus `/metrics` on METRICS_PORT, read at scrape time from the run's own figures.

Nothing is counted twice: counters and histograms are read from the `PipelineMetrics` the JSON summary is
made of (and the frame ring's drop counter), so a scrape after the last frame shows exactly the summary's
frames, dropped and recognitions. A scrape costs the pipeline nothing: the HTTP server is a thread of the
parent process, which is not on the frame path.

Names: `facepipe_` prefix, counters end in `_total`, times in seconds; labels are camera, stage, status and
queue names only, never a person's name.

Several cameras: every per-frame series (frames, dropped, fps, faces, recognitions, stage latency) has one
sample per camera (`camera` label = its name) and no total sample, so `sum without (camera)` is the run's
total and nothing is counted twice. One camera: one sample, labelled with its name, as always.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from app import __version__
from app.errors import UserError
from app.pipeline.metrics import PipelineMetrics

log = logging.getLogger(__name__)

PREFIX = "facepipe"


@dataclass
class PipelineReading:
    """What the exporter reads of a running pipeline (filled by the runtime from the supervisor)."""

    metrics: PipelineMetrics | None = None
    dropped: int = 0
    # Several cameras: name -> (its metrics, its dropped frames); empty: `metrics` is the one camera.
    cameras: dict[str, tuple[PipelineMetrics, int]] = field(default_factory=dict)
    queue_depths: dict[str, int] = field(default_factory=dict)
    gallery_persons: int | None = None
    gallery_embeddings: int | None = None


@dataclass
class IntegrationReading:
    """The integrations' own health: MQTT connection and event counts (None = that part is off)."""

    mqtt_connected: bool | None = None
    mqtt_sent: int = 0
    mqtt_dropped: int = 0
    mqtt_buffered: int = 0
    events_dropped: int = 0  # events the sink could not hand over (queue full)


class PipelineCollector:
    """A prometheus_client collector: every scrape calls `read_pipeline()` and `read_integrations()`."""

    def __init__(
        self,
        camera: str,
        read_pipeline: Callable[[], PipelineReading],
        read_integrations: Callable[[], IntegrationReading],
        build: dict[str, str],
    ) -> None:
        self.camera = camera
        self.read_pipeline = read_pipeline
        self.read_integrations = read_integrations
        self.build = build

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(f"{PREFIX}_build", "Version and models of the running pipeline")
        info.add_metric([], {"version": __version__, **self.build})
        yield info
        reading = self.read_pipeline()
        yield from self._pipeline(reading)
        yield from self._integrations(self.read_integrations())

    def _per_camera(self, r: PipelineReading) -> list[tuple[str, PipelineMetrics | None, int]]:
        if len(r.cameras) > 1:
            return [(name, metrics, dropped) for name, (metrics, dropped) in r.cameras.items()]
        return [(self.camera, r.metrics, r.dropped)]

    def _pipeline(self, r: PipelineReading) -> Iterator[Metric]:
        per_camera = self._per_camera(r)
        m = r.metrics
        frames = CounterMetricFamily(f"{PREFIX}_frames", "Frames processed to the end", labels=["camera"])
        dropped = CounterMetricFamily(
            f"{PREFIX}_dropped_frames", "Frames dropped on purpose (live sources)", labels=["camera"]
        )
        fps = GaugeMetricFamily(f"{PREFIX}_processed_fps", "Frames processed per second", labels=["camera"])
        faces = CounterMetricFamily(
            f"{PREFIX}_faces", "Faces shown (confirmed tracks), summed over frames", labels=["camera"]
        )
        recognitions = CounterMetricFamily(
            f"{PREFIX}_recognitions",
            "Recognition events (a track got or changed its label) by status",
            labels=["camera", "status"],
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_stage_latency_seconds",
            "Per-frame time in each stage; end_to_end = from the decoded frame to the sink's end",
            labels=["camera", "stage"],
        )
        for camera, cm, camera_dropped in per_camera:
            cam = [camera]
            frames.add_metric(cam, cm.frames if cm else 0)
            dropped.add_metric(cam, camera_dropped)
            fps.add_metric(cam, cm.fps if cm else 0.0)
            faces.add_metric(cam, cm.faces if cm else 0)
            for status in ("known", "unknown"):
                recognitions.add_metric([camera, status], cm.recognitions[status] if cm else 0)
            for stage, histogram in cm.histograms.items() if cm else ():
                buckets = histogram.cumulative()
                shown = [("+Inf" if b == float("inf") else repr(b), count) for b, count in buckets]
                latency.add_metric([camera, stage], shown, histogram.sum)
        yield from (frames, dropped, fps, faces, recognitions, latency)
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Messages waiting in a queue", labels=["queue"])
        for name, value in r.queue_depths.items():
            depth.add_metric([name], value)
        yield depth
        available = GaugeMetricFamily(f"{PREFIX}_gallery_available", "1 while the gallery answers searches")
        available.add_metric([], 1.0 if m is None or m.gallery_available else 0.0)
        yield available
        if r.gallery_persons is not None:
            persons = GaugeMetricFamily(f"{PREFIX}_gallery_persons", "Persons enrolled in the gallery")
            persons.add_metric([], r.gallery_persons)
            yield persons
        if r.gallery_embeddings is not None:
            vectors = GaugeMetricFamily(f"{PREFIX}_gallery_embeddings", "Embeddings stored in the gallery")
            vectors.add_metric([], r.gallery_embeddings)
            yield vectors

    def _integrations(self, r: IntegrationReading) -> Iterator[Metric]:
        lost = CounterMetricFamily(
            f"{PREFIX}_events_dropped", "Events the sink dropped because the event queue was full"
        )
        lost.add_metric([], r.events_dropped)
        yield lost
        if r.mqtt_connected is None:
            return
        up = GaugeMetricFamily(f"{PREFIX}_mqtt_connected", "1 while connected to the MQTT broker")
        up.add_metric([], 1.0 if r.mqtt_connected else 0.0)
        yield up
        sent = CounterMetricFamily(f"{PREFIX}_mqtt_events_sent", "Events the MQTT broker acknowledged")
        sent.add_metric([], r.mqtt_sent)
        yield sent
        dropped = CounterMetricFamily(
            f"{PREFIX}_mqtt_events_dropped", "Events dropped from the full MQTT buffer (broker away too long)"
        )
        dropped.add_metric([], r.mqtt_dropped)
        yield dropped
        buffered = GaugeMetricFamily(f"{PREFIX}_mqtt_buffered_events", "Events waiting for the MQTT broker")
        buffered.add_metric([], r.mqtt_buffered)
        yield buffered


class MetricsServer:
    """`/metrics` over HTTP on `port` (all interfaces), serving one collector from its own registry."""

    def __init__(self, port: int, collector: PipelineCollector, address: str = "0.0.0.0") -> None:  # noqa: S104
        self.port = port
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)  # type: ignore[arg-type]
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Listen now; a port that cannot be had is a UserError naming METRICS_PORT."""
        try:
            self._server, self._thread = start_http_server(self.port, self.address, registry=self.registry)
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            why = "is in use" if in_use else f"cannot be opened ({exc.strerror or exc})"
            raise UserError(
                f"FACEPIPE_METRICS_PORT={self.port} {why}; choose another port, or stop what listens there"
            ) from None
        log.info("metrics on http://%s:%d/metrics", self.address, self.port)

    def stop(self, timeout: float = 2.0) -> None:
        if self._server is None:
            return
        self._server.shutdown()  # returns once serve_forever has seen it (it polls every 0.5 s)
        self._server.server_close()
        self._thread.join(timeout)
        self._server = self._thread = None
