"""CLI of the pipeline: `python -m app.main --source SRC [options]`.

Flags override the environment and `.env` (see `.env.example`); every flag maps to one setting. Output
contract: logs and the final "stopped: <reason>" line go to stderr; the LAST line of stdout is the run's
JSON summary (frames, dropped, fps, latency_ms per stage and end_to_end, stop_reason). Exit codes: 0 for an
orderly end (end of file, window closed), 1 when a stage failed or died, 2 for bad input or setup
(`error: ...`, one line), 130 for Ctrl-C, 143 for SIGTERM. Outputs that exist are refused unless --overwrite
is given; an output naming an input or another output is always refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.cameras import resolve_cameras, split_source_flag
from app.cli_exit import run_cli
from app.config import BACKENDS, EMBEDDER_KINDS, LOG_LEVELS, Settings, load_settings
from app.errors import UserError

log = logging.getLogger(__name__)


# Flag -> (Settings field, help). Values go to load_settings as text, so config validates them with its
# one-line messages. --no-gui, --max-speed and --qdrant-https are switches, --embedder takes a kind or a file.
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "--source": (
        "video_source",
        "video file, rtsp:// or http(s):// URL (e.g. an MJPEG phone camera), webcam index; repeat as "
        "--source NAME=URL for several cameras",
    ),
    "--cameras": ("cameras_file", "cameras file (TOML, one [[camera]] table each; see cameras.example.toml)"),
    "--output": ("output", "write the annotated video here (.mp4)"),
    "--events": ("events", "write recognition events here (JSON lines)"),
    "--tracks-out": ("tracks_out", "per-frame faces: .jsonl, or .csv for MOTChallenge"),
    "--fps-target": ("fps_target", "file playback FPS (0 = the file's own); caps the FPS of live sources"),
    "--backend": ("backend", f"inference backend: {', '.join(BACKENDS)}"),
    "--detector": ("detector_model", "RetinaFace model file (also --detector-model)"),
    "--embedder-model": ("embedder_model", "embedder model file"),
    "--threshold": ("match_threshold", "similarity needed to name a face (default: the embedder's)"),
    "--det-threshold": ("det_threshold", "minimum detector score for a face"),
    "--det-size": ("det_size", "detector input side in pixels"),
    "--gallery": ("qdrant_path", "folder of the embedded gallery (QDRANT_PATH)"),
    "--collection": ("qdrant_collection", "gallery collection (QDRANT_COLLECTION)"),
    "--qdrant-host": ("qdrant_host", "use the Qdrant server at this host instead of the embedded gallery"),
    "--qdrant-port": ("qdrant_port", "Qdrant server port"),
    "--qdrant-api-key": ("qdrant_api_key", "Qdrant server API key"),
    "--threads": ("threads", "threads per inference session (0 = automatic)"),
    "--ring-slots": ("ring_slots", "frames in flight (shared-memory ring slots)"),
    "--log-level": ("log_level", f"{', '.join(LOG_LEVELS)} (default WARNING)"),
}
SWITCHES: dict[str, tuple[str, object, str]] = {
    "--no-gui": ("gui", False, "no window (headless)"),
    "--max-speed": ("max_speed", True, "read files as fast as the pipeline goes"),
    "--qdrant-https": ("qdrant_https", True, "use https for the Qdrant server"),
    "--overwrite": ("overwrite", True, "replace output files that exist (else the run refuses them)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app.main",
        description="Real-time face recognition: detect, track and name faces in a video, stream or webcam.",
    )
    for flag, (dest, help_text) in SETTING_FLAGS.items():
        aliases = [flag, "--detector-model"] if flag == "--detector" else [flag]
        # --source repeats: one camera per flag (source_flags_from); the first is also VIDEO_SOURCE.
        action = "append" if flag == "--source" else "store"
        p.add_argument(*aliases, dest=dest, metavar="VALUE", action=action, help=help_text)
    for flag, (dest, const, help_text) in SWITCHES.items():
        p.add_argument(flag, dest=dest, action="store_const", const=const, help=help_text)
    p.add_argument(
        "--embedder", metavar="KIND|FILE", help=f"embedder kind ({', '.join(EMBEDDER_KINDS)}) or file"
    )
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames from the source")
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default: .env)")
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """CLI flags as `load_settings` overrides (setting name -> value); unset flags are left out."""
    dests = [dest for dest, _ in SETTING_FLAGS.values()] + [dest for dest, _, _ in SWITCHES.values()]
    overrides = {dest: getattr(args, dest) for dest in dests if getattr(args, dest) is not None}
    sources = source_flags_from(args)
    if sources:
        overrides["video_source"] = split_source_flag(sources[0])[1]
    if args.embedder is not None:
        if args.embedder.lower() in EMBEDDER_KINDS:
            overrides["embedder"] = args.embedder.lower()
        else:
            overrides["embedder_model"] = args.embedder
    return overrides


def source_flags_from(args: argparse.Namespace) -> list[str]:
    """The `--source` values as given, in order (empty when none): the input of `resolve_cameras`."""
    return list(args.video_source or [])


def configure_logging(level_name: str) -> None:
    level = getattr(logging, level_name.upper(), logging.WARNING)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s",
    )
    # The periodic summary line is the one thing shown by default; ERROR silences it too.
    summary = logging.getLogger("app.pipeline.summary")
    summary.setLevel(min(level, logging.INFO) if level < logging.ERROR else level)


def preflight(settings: Settings, source_flags: Sequence[str] | None = None) -> None:
    """Checks that need no model and no stage process, so their errors come at once."""
    from app.stages.gui import gui_unavailable_reason
    from app.stages.sources import parse_source

    cameras = resolve_cameras(settings, source_flags)
    source_files: list[Path] = []
    for camera in cameras:
        try:
            source = parse_source(camera.source)
        except UserError as exc:
            if len(cameras) == 1:
                raise
            raise UserError(f"camera {camera.name!r}: {exc}") from None
        if source.kind == "file":
            source_files.append(Path(str(source.target)))
    check_run_outputs(settings, source_files, [camera.name for camera in cameras])
    if settings.gui:
        reason = gui_unavailable_reason()
        if reason is not None:
            raise UserError(reason)


def check_run_outputs(
    settings: Settings, source_files: Sequence[Path], cameras: Sequence[str] = ("default",)
) -> None:
    """Outputs never over an input (the videos, the models) or each other; the video's format is known.

    With several cameras `--output` is a folder of one NAME.mp4 per camera: each of those is checked."""
    from app.output_paths import check_output_paths
    from app.stages.gui import video_paths
    from app.vision.video_writer import check_video_path

    inputs = [("--source", path) for path in source_files]
    inputs += [("--detector", settings.detector_model), ("--embedder-model", settings.embedder_model)]
    videos = video_paths(settings.output, list(cameras)) if settings.output is not None else []
    named = [("--output", path) for path in videos]
    named += [("--events", settings.events), ("--tracks-out", settings.tracks_out)]
    outputs = [(flag, path) for flag, path in named if path is not None]
    check_output_paths(inputs, outputs, overwrite=settings.overwrite)
    for path in videos:
        check_video_path(path)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(overrides_from(args), env_file=args.env_file)
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    configure_logging(settings.log_level)
    log.debug("settings: %s", settings.redacted())
    preflight(settings, source_flags_from(args))
    from app.stages.assembly import run_pipeline

    result = run_pipeline(settings, max_frames=args.max_frames, source_flags=source_flags_from(args))
    if result.error is not None:
        print(f"error: {result.error}", file=sys.stderr)
        return result.exit_code
    print(f"stopped: {result.stop_reason}", file=sys.stderr, flush=True)
    print(json.dumps(result.summary), flush=True)
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A KeyboardInterrupt here is a Ctrl-C before the supervisor took over the signal (or after it let go).
    return run_cli(lambda: _run(args), interrupted_message="stopped: interrupted (Ctrl-C)")


if __name__ == "__main__":
    sys.exit(main())
