"""The integrations of one run, built from `Settings` and run around the pipeline in the parent process.

    integrations = Integrations(settings)          # camera: the name events and metrics carry
    integrations.start()                           # /metrics bound (or a UserError), MQTT thread started
    stages = ...GuiStage(..., fanout=integrations.fanout)...
    integrations.attach(supervisor); supervisor.run()
    integrations.stop()                            # bounded: returns within a few seconds whatever the broker

Threads, all in the parent and off the frame path: `events` moves events from the sink's queue to the MQTT
publisher, `housekeeping` gives the publisher the enrolled persons once recognition is ready and prunes old
snapshots; the publisher's and the metrics server's own threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.cameras import DEFAULT_CAMERA
from app.config import Settings
from app.integrations.events import EventFanout, EventQueue
from app.integrations.mqtt import MqttConfig, MqttPublisher
from app.integrations.prometheus import IntegrationReading, MetricsServer, PipelineCollector, PipelineReading
from app.integrations.snapshots import SnapshotRetention, SnapshotWriter
from app.pipeline.metrics import StreamMetrics

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 0.2  # how soon the enrolled persons reach discovery once recognition is ready
PRUNE_EVERY_S = 60.0
EVENT_POLL_S = 0.05
DRAIN_LIMIT = 100_000  # events read off the queue after the run, at most (it holds far fewer)
RECOGNITION_STAGE = "embed"  # the node holding the gallery: its Ready info lists the persons


class Integrations:
    def __init__(
        self, settings: Settings, camera: str = DEFAULT_CAMERA, cameras: list[str] | None = None
    ) -> None:
        self.settings = settings
        self.camera = camera
        self.cameras = list(cameras or [camera])  # MQTT keeps a state per camera
        self.mqtt_config = MqttConfig.from_settings(settings)
        self.events = EventQueue() if self.mqtt_config is not None else None
        folder = settings.snapshots_dir
        self.snapshots = SnapshotWriter(folder, settings.snapshot_full_frame) if folder is not None else None
        self.retention = (
            SnapshotRetention(folder, settings.snapshot_retain_days * 86400.0, settings.snapshot_retain_count)
            if folder is not None
            else None
        )
        self.publisher: MqttPublisher | None = None
        self.server: MetricsServer | None = None
        self._supervisor: Any = None
        self._persons: list[str] | None = None
        self._embeddings: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def fanout(self) -> EventFanout | None:
        """What the sink stage needs (picklable); None when no integration wants events."""
        if self.events is None and self.snapshots is None:
            return None
        return EventFanout(camera=self.camera, events=self.events, snapshots=self.snapshots)

    def start(self) -> None:
        """Bind /metrics first (a taken port is a UserError before anything else starts), then the rest."""
        s = self.settings
        if s.metrics_port is not None:
            models = {"detector": s.detector_model.name, "embedder": s.embedder_model.name}
            build = {"backend": s.backend, **models}
            collector = PipelineCollector(self.camera, self.read_pipeline, self.read_integrations, build)
            self.server = MetricsServer(s.metrics_port, collector)
            self.server.start()
        if self.snapshots is not None:
            self.snapshots.open()
        if self.mqtt_config is not None:
            self.publisher = MqttPublisher(self.mqtt_config, self.cameras)
            self.publisher.start()
            self._thread(self._move_events, "events")
        if self.publisher is not None or self.retention is not None:
            self._thread(self._housekeeping, "housekeeping")

    def attach(self, supervisor: Any) -> None:
        """The running pipeline to read: `supervisor.metrics` and `supervisor.live_view()`."""
        self._supervisor = supervisor

    def stop(self, timeout: float = 2.0) -> None:
        """Stop everything, bounded: the events the run made are handed to MQTT first."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        if self.events is not None:
            if self.publisher is not None:
                for _ in range(DRAIN_LIMIT):
                    event = self.events.get(timeout=0.01)
                    if event is None:
                        break
                    self.publisher.submit(event)
            self.events.close()
        if self.publisher is not None:
            self.publisher.stop(timeout)
        if self.server is not None:
            self.server.stop(timeout)

    # -- readings for /metrics ----------------------------------------------------------------------------

    def read_pipeline(self) -> PipelineReading:
        supervisor = self._supervisor
        if supervisor is None:
            return PipelineReading()
        view = supervisor.live_view()
        self._note_ready(view["ready"])
        dropped = view["dropped"]
        metrics = supervisor.metrics
        by_stream = view.get("dropped_by_stream") or {}
        cameras = {}
        if isinstance(metrics, StreamMetrics):
            cameras = {
                name: (camera, by_stream.get(i, camera.dropped))
                for i, (name, camera) in enumerate(zip(metrics.cameras, metrics.per_stream, strict=True))
            }
        return PipelineReading(
            metrics=metrics,
            dropped=metrics.dropped if dropped is None else dropped,
            cameras=cameras,
            queue_depths=view["queues"],
            gallery_persons=None if self._persons is None else len(self._persons),
            gallery_embeddings=self._embeddings,
        )

    def read_integrations(self) -> IntegrationReading:
        p = self.publisher
        reading = IntegrationReading(events_dropped=self.events.dropped if self.events is not None else 0)
        if p is not None:
            reading.mqtt_connected = p.connected.is_set()
            reading.mqtt_sent, reading.mqtt_dropped, reading.mqtt_buffered = p.sent, p.dropped, p.buffered
        return reading

    # -- threads ------------------------------------------------------------------------------------------

    def _thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _move_events(self) -> None:
        assert self.events is not None and self.publisher is not None
        while not self._stop.is_set():
            event = self.events.get(timeout=EVENT_POLL_S)
            if event is not None:
                self.publisher.submit(event)

    def _housekeeping(self) -> None:
        next_prune = 0.0
        elapsed = 0.0
        while not self._stop.wait(HOUSEKEEPING_S):
            elapsed += HOUSEKEEPING_S
            if self._persons is None and self._supervisor is not None:
                self._note_ready(self._supervisor.live_view()["ready"])
            if self.retention is not None and elapsed >= next_prune:
                deleted = self.retention.prune()
                if deleted:
                    log.info("snapshots: %d past retention deleted", deleted)
                next_prune = elapsed + PRUNE_EVERY_S

    def _note_ready(self, ready: dict[str, dict[str, Any]]) -> None:
        info = ready.get(RECOGNITION_STAGE)
        if info is None or self._persons is not None:
            return
        self._persons = list(info.get("person_names") or [])
        self._embeddings = info.get("embeddings")  # type: ignore[assignment]
        if self.publisher is not None:
            self.publisher.set_persons(self._persons)
