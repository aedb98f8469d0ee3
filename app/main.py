"""CLI of the pipeline: `python -m app.main --source SRC [options]`.

Flags override the environment and `.env` (see `.env.example`); every flag but --max-frames and --env-file
maps to one setting, and means what it means in `python -m app.enroll`. Output
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
from app.config import (
    GALLERY_SETTINGS,
    MODEL_SETTINGS,
    Settings,
    add_setting_flags,
    env_file_from,
    flag_overrides,
    load_settings,
)
from app.errors import UserError

log = logging.getLogger(__name__)


# The settings this CLI takes as flags; `app.config.setting_flag` makes each flag (name, help, value), so a
# flag shared with `app.enroll` means the same there. Values go to load_settings as text: config validates.
SETTINGS = (
    "video_source",
    "cameras_file",
    "output",
    "events",
    "tracks_out",
    "fps_target",
    "max_speed",
    "gui",
    "overwrite",
    *MODEL_SETTINGS,
    *GALLERY_SETTINGS,
    "ring_slots",
    "log_level",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app.main",
        description="Real-time face recognition: detect, track and name faces in a video, stream or webcam.",
    )
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames from the source")
    add_setting_flags(p, SETTINGS)
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """CLI flags as `load_settings` overrides (setting name -> value); unset flags are left out."""
    overrides = flag_overrides(args, SETTINGS)
    sources = source_flags_from(args)
    if sources:  # --source repeats, one camera per flag (NAME=URL); the first is also VIDEO_SOURCE
        overrides["video_source"] = split_source_flag(sources[0])[1]
    return overrides


def source_flags_from(args: argparse.Namespace) -> list[str]:
    """The `--source` values as given, in order (empty when none): the input of `resolve_cameras`."""
    return list(getattr(args, "video_source", None) or [])


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
    named: list[tuple[str, Path | None]] = [("--output", path) for path in videos]
    named += [("--events", settings.events), ("--tracks-out", settings.tracks_out)]
    outputs = [(flag, path) for flag, path in named if path is not None]
    check_output_paths(inputs, outputs, overwrite=settings.overwrite)
    for path in videos:
        check_video_path(path)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(overrides_from(args), env_file=env_file_from(args))
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
