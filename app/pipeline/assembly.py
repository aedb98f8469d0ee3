"""Which stages a run has and how they are configured, from one validated `Settings`; and running them.

capture -> detect -> postprocess -> recognize -> gui (window and/or the video, events and tracks files).
Stage objects are built here, in the parent, but are cheap until their setup() runs in their own process.
"""

from __future__ import annotations

import os

from app.config import Settings
from app.integrations.events import EventFanout
from app.integrations.runtime import Integrations
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.supervisor import RunResult, Supervisor
from app.stages.capture import CaptureStage
from app.stages.detect import DetectStage
from app.stages.gui import GuiStage
from app.stages.postprocess import PostprocessStage
from app.stages.recognize import RecognizeStage
from app.tracking import TrackerConfig

STAGE_NAMES = ("capture", "detect", "postprocess", "recognize", "gui")


def inference_threads(settings: Settings) -> tuple[int, int]:
    """(detector, embedder) threads per session. THREADS=0 ("auto") splits the CPUs this process may use.

    Five stage processes share the machine, and an ONNX Runtime session left to its own default takes a
    spinning thread per core: on 2 CPUs one thread per session ran the Hamilton clip at 35 FPS against 28
    with the default. The detector, the heaviest model, gets half the CPUs; the embedder a quarter.
    """
    if settings.threads > 0:
        return settings.threads, settings.threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, cpus // 2), max(1, cpus // 4)


def build_stages(
    settings: Settings,
    ring: FrameRingHandle,
    max_frames: int | None = None,
    fanout: EventFanout | None = None,
) -> list[object]:
    # Decode down to the tracker's low threshold: ByteTrack's second association needs the weak boxes too.
    score_floor = min(settings.det_threshold, TrackerConfig.from_settings(settings).low_thresh)
    detect_threads, embed_threads = inference_threads(settings)
    return [
        CaptureStage(
            settings.video_source,
            ring,
            fps_target=settings.fps_target,
            max_speed=settings.max_speed,
            max_frames=max_frames,
            verbose=settings.log_level == "DEBUG",
        ),
        DetectStage(ring, settings.detector_model, settings.backend, detect_threads, settings.det_size),
        PostprocessStage(score_floor, settings.nms_threshold),
        RecognizeStage(ring, settings, threads=embed_threads),
        GuiStage(
            ring,
            show_window=settings.gui,
            output=settings.output,
            events=settings.events,
            tracks_out=settings.tracks_out,
            fanout=fanout,
            blur_unknown=settings.blur_unknown,
        ),
    ]


def run_pipeline(
    settings: Settings,
    max_frames: int | None = None,
    summary_every_s: float = 5.0,
    integrations: Integrations | None = None,
) -> RunResult:
    """Run the whole pipeline to its end (file end, window closed, Ctrl-C, a stage failing or dying).

    MQTT, /metrics and snapshots run around it (`app.integrations`); a caller that passes its own started
    `integrations` stops them itself (e.g. to read /metrics once more after the run)."""
    own = integrations is None
    if integrations is None:
        integrations = Integrations(settings)
        integrations.start()
    try:
        ring = Supervisor.new_ring_handle()
        stages = build_stages(settings, ring, max_frames=max_frames, fanout=integrations.fanout)
        supervisor = Supervisor(
            stages,
            ring,
            ring_slots=settings.ring_slots,
            log_level=settings.log_level,
            summary_every_s=summary_every_s,
        )
        integrations.attach(supervisor)
        return supervisor.run()
    finally:
        if own:
            integrations.stop()
