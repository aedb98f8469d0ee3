"""Which nodes a run has and how they are configured, from one validated `Settings` and the camera list.

    capture[camera 1..N] ─▶ detect ─┬▶ postprocess ─▶ recognize ─┬▶ gui
                          (shared, │  (lane 1: cameras 1, 3..) │  (shared: window, files)
                          batched) └▶ postprocess:2 ─▶ recognize:2 ┘
                                                          ▲ │ embed requests / results (side queues)
                                                          │ ▼
                                                    embed (shared: embedder + gallery)

One capture node (one process, one shared-memory ring) per camera; one detector batching across all of
them (or `detect_workers` detectors, each batching its share of the cameras); post-processing and tracking
in `tracking_workers` lanes (a camera's frames always take its lane, so its tracker lives in one process;
one lane unless there are more than 4 cameras); one embedding worker and one GUI/sink stage for all. Stage
objects are built here, in the parent, but are cheap until their setup() runs in their own process. One
camera builds the same five stages (and node names) as the single-stream pipeline always had, plus the
embedding worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence

from app.cameras import (
    CameraConfig,
    effective_det_threshold,
    effective_fps_target,
    effective_min_face,
    resolve_cameras,
)
from app.config import Settings
from app.inference.cuda_driver import cuda_devices
from app.integrations.events import EventFanout
from app.integrations.runtime import Integrations
from app.pipeline.frame_ring import StreamRings
from app.pipeline.graph import Channel, Node, PipelineGraph, Stream
from app.pipeline.supervisor import RunResult, Supervisor
from app.recognition.unknowns import QUEUE_SIZE as UNKNOWN_QUEUE_SIZE
from app.stages.capture import CaptureStage
from app.stages.detect import DetectStage
from app.stages.embed import EmbedStage
from app.stages.gui import GuiStage
from app.stages.nvdec import nvdec_frame_format
from app.stages.postprocess import PostprocessStage
from app.stages.recognize import EmbedChannel, RecognizeStage
from app.tracking import TrackerConfig

log = logging.getLogger(__name__)

STAGE_NAMES = ("capture", "detect", "postprocess", "recognize", "gui")
EMBED_REQUESTS_PER_CAMERA = 4  # requests in flight per camera (a file stream has at most its result lag)


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


def tracking_lanes(settings: Settings, cameras: int) -> int:
    """Post-processing + tracking processes: TRACKING_WORKERS, or one per 4 cameras within a quarter of
    the CPUs (one tracking process keeps up with ~700 frames/s of 10 faces on an H200 host's core).

    KEEP_UNKNOWN does not change it: the unknown-face store (an embedded gallery, held by one process) is
    the embedding worker's, and every lane sends it its finished sightings."""
    if settings.tracking_workers > 0:
        return max(1, min(settings.tracking_workers, cameras))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(-(-cameras // 4), cpus // 4))


def decode_threads(settings: Settings, cameras: int) -> int:
    """FFmpeg decoding threads per camera: DECODE_THREADS, or with 0 FFmpeg's own choice (one per core) for
    one camera and the CPUs shared out among several, at least one each.

    Sixteen 1080p H.264 files on the H200 host's 16 cores (testbench/gpu/bench_decode.py) decoded 1069
    frames/s in all at 14.3 ms of CPU a frame with FFmpeg's threads, 1289 at 11.5 ms with one thread each."""
    if settings.decode_threads > 0 or cameras <= 1:
        return settings.decode_threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, cpus // cameras)


CAMERAS_PER_GPU_DETECTOR = 8


def detector_workers(settings: Settings, cameras: int, det_device: str | None = None) -> int:
    """Detector processes: DETECT_WORKERS, or with 0 one per 8 cameras where the detector runs on an NVIDIA
    GPU (torch backend, a GPU the driver reports, no `det_device` of "cpu"), else one.

    Why: on the H200 host one detector is the limit of 16 default-model cameras: its batches are always full
    (31.9 of 32), each uploading ~200 MB of 1080p frames before the model runs, and frames wait ~300 ms for
    it; two detectors gave 1446 FPS (steady 1544) against 1409 (1450) in one call, 1554 (1706) with
    RESULT_LAG=8 (testbench/gpu/pipeline_results_h200_streams_12_workers.jsonl). On a CPU the detectors
    would split the same cores."""
    if settings.detect_workers > 0:
        return max(1, min(settings.detect_workers, cameras))
    gpu = settings.backend == "torch" and (det_device or "cuda") != "cpu" and cuda_devices() > 0
    return max(1, min(-(-cameras // CAMERAS_PER_GPU_DETECTOR), 8)) if gpu else 1


def lane_name(stage: str, lane: int) -> str:
    return stage if lane == 0 else f"{stage}:{lane + 1}"


def capture_node_name(camera: CameraConfig, cameras: Sequence[CameraConfig]) -> str:
    """`capture` with one camera (as always), `capture:NAME` with several (the process is fp-capture:NAME)."""
    return "capture" if len(cameras) == 1 else f"capture:{camera.name}"


def build_graph(
    settings: Settings,
    cameras: Sequence[CameraConfig],
    max_frames: int | None = None,
    det_max_batch: int | None = None,
    det_precision: str | None = None,
    det_device: str | None = None,
    fanout: EventFanout | None = None,
) -> PipelineGraph:
    """The run's graph: a capture node and a ring per camera, then the shared stages."""
    if not cameras:
        raise ValueError("a run needs at least one camera")
    low = TrackerConfig.from_settings(settings).low_thresh
    score_floor = min(settings.det_threshold, low)
    detect_threads, embed_threads = inference_threads(settings)
    slots = settings.ring_slots
    detectors = detector_workers(settings, len(cameras), det_device)
    threads_per_camera = decode_threads(settings, len(cameras))
    streams: list[Stream] = []
    nodes: list[Node] = []
    channels: list[Channel] = []
    for index, camera in enumerate(cameras):
        ring = Supervisor.new_ring_handle()
        name = capture_node_name(camera, cameras)
        capture = CaptureStage(
            camera.source,
            ring,
            fps_target=effective_fps_target(camera, settings),
            max_speed=settings.max_speed,
            max_frames=max_frames,
            verbose=settings.log_level == "DEBUG",
            stream=index,
            camera=camera.name,
            live_file=settings.live_files,
            decoder=settings.decoder,
            decode_threads=threads_per_camera,
            nvdec_format=nvdec_frame_format(settings.frame_format, settings.backend),
            nvdec_memory=settings.nvdec_memory,
        )
        nodes.append(Node(name, capture, stream=index))
        streams.append(Stream(index, camera.name, ring, name, held=settings.name_lookahead))
        # Frames of a live camera may wait here after its capture overwrote them (they are then skipped).
        channels.append(Channel(name, lane_name("detect", index % detectors), 2 * slots + 2))
    rings = StreamRings({s.index: s.ring for s in streams})
    # Decode down to the tracker's low threshold: ByteTrack's second association needs the weak boxes too.
    thresholds = {i: min(effective_det_threshold(c, settings), low) for i, c in enumerate(cameras)}
    min_faces = {i: effective_min_face(c, settings) for i, c in enumerate(cameras)}
    lanes = tracking_lanes(settings, len(cameras))
    lane_streams = [tuple(range(k, len(cameras), lanes)) for k in range(lanes)]
    ctx = multiprocessing.get_context("spawn")
    in_flight = max(EMBED_REQUESTS_PER_CAMERA, settings.result_lag)
    requests = ctx.Queue(maxsize=in_flight * len(cameras) + 4)
    # Results are never refused (the worker must not block on them; tracking drains them every frame).
    results = [ctx.Queue() for _ in range(lanes)]
    # KEEP_UNKNOWN: the lanes' finished unknown sightings to the one store, in the embedding worker.
    sightings = ctx.Queue(maxsize=UNKNOWN_QUEUE_SIZE * lanes) if settings.keep_unknown else None
    for d in range(detectors):
        members = tuple(range(d, len(cameras), detectors))
        detect = DetectStage(
            rings,
            settings.detector_model,
            settings.backend,
            detect_threads,
            settings.det_size,
            max_batch=det_max_batch,
            precision=det_precision,
            device=det_device,
            # Only what post-processing can keep crosses the queue (the lowest camera threshold).
            candidate_floor=min(thresholds.values()),
            streams=members,
            gpu_wait=settings.gpu_wait,
            compile_graphs=settings.torch_compile,
            compile_batches=settings.torch_compile_batches,
        )
        nodes.append(Node(lane_name("detect", d), detect))
        outs = [(k, tuple(s for s in members if s % lanes == k)) for k in range(lanes)]
        outs = [(k, routed) for k, routed in outs if routed]
        for k, routed in outs:
            # Frames in flight after detection: those cameras' ring slots at most (a file's: + look-ahead).
            size = len(routed) * (slots + settings.name_lookahead) + 2
            channels.append(
                Channel(
                    lane_name("detect", d),
                    lane_name("postprocess", k),
                    size,
                    routed if len(outs) > 1 else None,
                )
            )
    # Before the tracking stages: a bad embedder or gallery is reported by the stage that loads it
    # (tracking only reads the model's input spec, and would fail on the same file with a vaguer line).
    embed = EmbedStage(settings, requests, results, threads=embed_threads, sightings=sightings, lanes=lanes)
    nodes.append(Node("embed", embed))
    for k, members in enumerate(lane_streams):
        post, track = lane_name("postprocess", k), lane_name("recognize", k)
        # Frames in flight after detection: the lane's cameras' ring slots at most.
        size = len(members) * (slots + settings.name_lookahead) + 2
        nodes += [
            Node(post, PostprocessStage(score_floor, settings.nms_threshold, thresholds, min_faces)),
            Node(
                track,
                RecognizeStage(
                    rings,
                    settings,
                    threads=embed_threads,
                    embed=EmbedChannel(requests, results[k], k, sightings),
                    result_lag=settings.result_lag,
                    lookahead=settings.name_lookahead,
                ),
            ),
        ]
        channels += [Channel(post, track, size), Channel(track, "gui", size)]
    nodes.append(
        Node(
            "gui",
            GuiStage(
                rings,
                show_window=settings.gui,
                output=settings.output,
                events=settings.events,
                tracks_out=settings.tracks_out,
                cameras=[c.name for c in cameras],
                fanout=fanout,
                blur_unknown=settings.blur_unknown,
            ),
        )
    )
    side = [requests, *results, *([sightings] if sightings is not None else [])]
    return PipelineGraph(nodes, channels, streams, side_queues=side)


def run_pipeline(
    settings: Settings,
    max_frames: int | None = None,
    summary_every_s: float = 5.0,
    source_flags: Sequence[str] | None = None,
    cameras: Sequence[CameraConfig] | None = None,
    integrations: Integrations | None = None,
) -> RunResult:
    """Run the whole pipeline to its end (every stream ended, window closed, Ctrl-C, a stage failing).

    MQTT, /metrics and snapshots run around it (`app.integrations`); a caller that passes its own started
    `integrations` stops them itself (e.g. to read /metrics once more after the run)."""
    if cameras is None:
        cameras = resolve_cameras(settings, source_flags)
    own = integrations is None
    if integrations is None:
        names = [c.name for c in cameras]
        integrations = Integrations(settings, camera=names[0], cameras=names)
        integrations.start()
    try:
        graph = build_graph(settings, cameras, max_frames=max_frames, fanout=integrations.fanout)
        supervisor = Supervisor(
            graph,
            ring_slots=settings.ring_slots,
            log_level=settings.log_level,
            summary_every_s=summary_every_s,
            slow_call_ms=settings.slow_call_ms,
        )
        integrations.attach(supervisor)
        return supervisor.run()
    finally:
        if own:
            integrations.stop()
