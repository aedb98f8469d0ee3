"""Pipeline metrics from the stamps every frame collects: throughput, drops, per-stage and end-to-end latency.

Definitions (all from `FrameMeta.stamps`, monotonic seconds):
- stage latency: end - start of that stage's stamp (its own work on the frame; a batch counts for each frame),
- queue wait: a stage's start - the previous stage's end (time spent waiting in the queue before it),
- end_to_end: the sink's end - capture's end, i.e. from the decoded frame being in shared memory to it being
  shown/written; capture's own stamp (read + decode) is reported as the "capture" stage.
- fps: frames finished by the sink per second of running time (from the start signal to the last frame).

Percentiles come from a bounded reservoir sample per series, exact for runs of up to `capacity` frames.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

import numpy as np

from app.pipeline.messages import FrameMeta

END_TO_END = "end_to_end"
# Upper bounds (seconds) of the latency histograms /metrics exports: CPU stages take 1-250 ms, GPU ones < 5.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """A latency series as Prometheus keeps it: counts per bucket (seconds), their number and sum."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, values <= it) per bucket, +Inf last."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class Reservoir:
    """A uniform sample of at most `capacity` values of a series (Vitter's algorithm R), for percentiles."""

    def __init__(self, capacity: int = 50_000, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self._values: list[float] = []
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self._values) < self.capacity:
            self._values.append(value)
            return
        index = self._random.randrange(self.count)
        if index < self.capacity:
            self._values[index] = value

    def percentiles(self, qs: Iterable[float] = (50, 95)) -> list[float]:
        if not self._values:
            return [float("nan") for _ in qs]
        return [float(v) for v in np.percentile(np.asarray(self._values), list(qs))]


class PipelineMetrics:
    """Aggregates finished frames; `interval_line()` for the periodic log, `summary()` for the final JSON."""

    def __init__(self, stage_names: Iterable[str], capacity: int = 50_000) -> None:
        self.stage_names = list(stage_names)
        self.latency = {name: Reservoir(capacity) for name in [*self.stage_names, END_TO_END]}
        self.wait = {name: Reservoir(capacity) for name in self.stage_names[1:]}
        self.histograms = {name: LatencyHistogram() for name in self.latency}
        self.frames = 0
        self.faces = 0  # faces shown, summed over frames
        self.recognitions: Counter[str] = Counter()  # recognition events by status (known / unknown)
        self.gallery_available = True  # as the last frame found it
        self.dropped = 0  # as last reported (interval line, summary): the frame ring counts them
        self.started_at: float | None = None
        self.last_done_at: float | None = None
        # Since the last interval line, for "current" figures in the periodic log.
        self._interval_start = time.monotonic()
        self._interval_frames = 0
        self._interval_e2e: list[float] = []
        self._interval_stage: dict[str, list[float]] = {name: [] for name in self.stage_names}

    def start(self, now: float | None = None) -> None:
        self.started_at = time.monotonic() if now is None else now
        self._interval_start = self.started_at

    def add(self, meta: FrameMeta) -> None:
        stamps = meta.stamps
        if not stamps:
            return
        self.frames += 1
        self.faces += meta.faces
        self.recognitions.update(meta.recognitions)
        self.gallery_available = not meta.gallery_unavailable
        self._interval_frames += 1
        previous_end: float | None = None
        for stamp in stamps:
            ms = (stamp.end - stamp.start) * 1000.0
            if stamp.stage in self.latency:
                self.latency[stamp.stage].add(ms)
                self.histograms[stamp.stage].add(ms / 1000.0)
                self._interval_stage[stamp.stage].append(ms)
            if previous_end is not None and stamp.stage in self.wait:
                self.wait[stamp.stage].add((stamp.start - previous_end) * 1000.0)
            previous_end = stamp.end
        e2e = (stamps[-1].end - stamps[0].end) * 1000.0
        self.latency[END_TO_END].add(e2e)
        self.histograms[END_TO_END].add(e2e / 1000.0)
        self._interval_e2e.append(e2e)
        self.last_done_at = stamps[-1].end
        if self.started_at is None:
            self.start(stamps[0].start)

    @property
    def fps(self) -> float:
        if self.started_at is None or self.last_done_at is None or self.frames == 0:
            return 0.0
        elapsed = self.last_done_at - self.started_at
        return self.frames / elapsed if elapsed > 0 else 0.0

    def interval_line(self, dropped: int, now: float | None = None) -> str:
        """One log line about the frames since the previous call, then start a new interval."""
        now = time.monotonic() if now is None else now
        self.dropped = dropped
        elapsed = max(now - self._interval_start, 1e-9)
        fps = self._interval_frames / elapsed
        parts = [f"frames {self.frames}", f"{fps:.1f} fps", f"dropped {dropped}"]
        if self._interval_e2e:
            p50, p95 = np.percentile(self._interval_e2e, [50, 95])
            parts.append(f"latency p50 {p50:.0f} ms p95 {p95:.0f} ms")
            stages = ", ".join(
                f"{name} {np.median(values):.1f}" for name, values in self._interval_stage.items() if values
            )
            parts.append(f"stage ms (median): {stages}")
        self._interval_start = now
        self._interval_frames = 0
        self._interval_e2e = []
        self._interval_stage = {name: [] for name in self.stage_names}
        return " | ".join(parts)

    def summary(self, dropped: int, stop_reason: str) -> dict[str, object]:
        """The final summary: frames, dropped, fps, faces, recognitions {known, unknown}, latency_ms
        {stage|end_to_end: {p50, p95}}, stop_reason."""

        self.dropped = dropped

        def pair(reservoir: Reservoir) -> dict[str, float | None]:
            p50, p95 = reservoir.percentiles((50, 95))
            return {"p50": _round(p50), "p95": _round(p95)}

        latency: dict[str, dict[str, float | None]] = {name: pair(r) for name, r in self.latency.items()}
        latency[END_TO_END] = self.end_to_end_ms()

        elapsed = None
        if self.started_at is not None and self.last_done_at is not None:
            elapsed = round(self.last_done_at - self.started_at, 3)
        return {
            "frames": self.frames,
            "dropped": dropped,
            "fps": round(self.fps, 2),
            "elapsed_s": elapsed,
            "faces": self.faces,
            "recognitions": {status: self.recognitions[status] for status in ("known", "unknown")},
            "latency_ms": latency,
            "queue_wait_ms": {name: pair(r) for name, r in self.wait.items()},
            "stop_reason": stop_reason,
        }

    def end_to_end_ms(self) -> dict[str, float | None]:
        p50, p95, p99 = self.latency[END_TO_END].percentiles((50, 95, 99))
        return {"p50": _round(p50), "p95": _round(p95), "p99": _round(p99)}


class StreamMetrics:
    """Metrics of a run serving several streams: in total and per camera (`FrameMeta.stream`)."""

    def __init__(self, stage_names: Iterable[str], cameras: list[str], capacity: int = 50_000) -> None:
        names = list(stage_names)
        self.cameras = list(cameras)
        self.total = PipelineMetrics(names, capacity)
        self.per_stream = [PipelineMetrics(names, capacity) for _ in self.cameras]

    # What /metrics reads (app.integrations.prometheus), as of a PipelineMetrics: the totals.
    @property
    def frames(self) -> int:
        return self.total.frames

    @property
    def fps(self) -> float:
        return self.total.fps

    @property
    def faces(self) -> int:
        return self.total.faces

    @property
    def recognitions(self) -> Counter[str]:
        return self.total.recognitions

    @property
    def histograms(self) -> dict[str, LatencyHistogram]:
        return self.total.histograms

    @property
    def gallery_available(self) -> bool:
        return self.total.gallery_available

    @property
    def dropped(self) -> int:
        return self.total.dropped

    def start(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for metrics in (self.total, *self.per_stream):
            metrics.start(now)

    def add(self, meta: FrameMeta) -> None:
        self.total.add(meta)
        if 0 <= meta.stream < len(self.per_stream):
            self.per_stream[meta.stream].add(meta)

    def interval_line(self, dropped: dict[int, int], now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        line = self.total.interval_line(sum(dropped.values()), now)
        if len(self.cameras) == 1:
            return line
        rates = []
        for i, metrics in enumerate(self.per_stream):
            elapsed = max(now - metrics._interval_start, 1e-9)
            rates.append(f"{self.cameras[i]} {metrics._interval_frames / elapsed:.1f}")
            metrics.interval_line(dropped.get(i, 0), now)  # starts the camera's next interval
        return f"{line} | fps per camera: {', '.join(rates)}"

    def summary(self, dropped: dict[int, int], stop_reason: str) -> dict[str, object]:
        """The total summary (PipelineMetrics.summary) plus `cameras`: name -> frames, fps, dropped,
        end-to-end latency p50/p95/p99."""
        out = self.total.summary(sum(dropped.values()), stop_reason)
        for i, metrics in enumerate(self.per_stream):
            metrics.dropped = dropped.get(i, 0)  # what /metrics reads once the rings are gone
        out["cameras"] = {
            name: {
                "frames": metrics.frames,
                "fps": round(metrics.fps, 2),
                "dropped": dropped.get(i, 0),
                "latency_ms": {END_TO_END: metrics.end_to_end_ms()},
            }
            for i, (name, metrics) in enumerate(zip(self.cameras, self.per_stream, strict=True))
        }
        return out


class RollingFps:
    """Frames per second over the last `window_s` seconds: what the picture does now, not since the start.

    The rate is (frames - 1) / (last - first) over the frames of the window, so a frame that falls exactly
    on the window's edge does not make it jump, and it is right from the second frame on. No frame in the
    last window reads 0.
    """

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> float:
        """Count one frame done at `now` (default: the clock) and return the current rate."""
        now = self._clock() if now is None else now
        self._times.append(now)
        return self.rate(now)

    def rate(self, now: float | None = None) -> float:
        """Frames per second at `now`, from the frames of the last window."""
        now = self._clock() if now is None else now
        start = now - self.window_s
        while self._times and self._times[0] < start:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


def _round(value: float) -> float | None:
    return None if value != value else round(value, 2)  # NaN (no samples) -> null in JSON
