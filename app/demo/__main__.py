"""``python -m app.demo make|sets|run``: make a synthetic video, print the demo photos, or run the demo."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from app.cli_exit import run_cli
from app.demo.ground_truth import ground_truth_path
from app.demo.scenario import (
    Scenario,
    bench_scenario,
    demo_sets,
    images_from_dir,
    parse_size,
    standard_scenario,
)
from app.demo.video import write_video
from app.errors import UserError
from app.models.paths import DEMO_IMAGES_DIR, REPO_ROOT

PRESETS = {
    # preset: (default size, default seconds)
    "demo": ((1280, 720), 12.0),
    "bench1080": ((1920, 1080), 10.0),
}


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.demo", description=__doc__.split(":", 1)[1].strip())
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="render a synthetic video (.mp4) and its ground truth (.gt.json)")
    make.add_argument("--out", type=Path, default=Path("data/demo/demo.mp4"), help="output .mp4 path")
    make.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="demo: the README video (obama2, obama3, biden at 720p); "
        "bench1080: --faces faces per frame at 1920x1080 from all four photos",
    )
    make.add_argument("--size", type=_size, help="WIDTHxHEIGHT (default 1280x720, bench1080: 1920x1080)")
    make.add_argument("--seconds", type=float, help="duration (default 12, bench1080: 10)")
    make.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    make.add_argument("--seed", type=int, default=0, help="paths, brightness and background (default 0)")
    make.add_argument("--faces", type=int, default=10, help="bench1080: faces per frame (default 10)")
    make.add_argument(
        "--images",
        type=Path,
        help="folder of photos (<label>/*.jpg or <label><n>.jpg); default: the demo images, "
        "split into the enrollment and video sets",
    )
    sets = commands.add_parser("sets", help="print the demo enrollment and video photo sets as JSON")
    sets.add_argument("--images", type=Path, default=DEMO_IMAGES_DIR)
    commands.add_parser(
        "run",
        help="enroll the demo people, make the demo video and run the pipeline on it (README main job); "
        "other flags (e.g. --no-gui --max-frames 30) go to python -m app.main",
    )
    return parser


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The demo's arguments; for `run`, every flag it does not know goes to the pipeline as `pipeline_args`
    (a leading `--` is dropped). argparse's REMAINDER would refuse flags right after `run`."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "run":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    args.pipeline_args = extra[1:] if extra[:1] == ["--"] else extra
    return args


def _scenario(args: argparse.Namespace) -> Scenario:
    default_size, default_seconds = PRESETS[args.preset]
    size = args.size or default_size
    seconds = args.seconds if args.seconds is not None else default_seconds
    if seconds <= 0 or args.fps <= 0:
        raise UserError(f"--seconds {seconds} and --fps {args.fps} must be positive")
    if args.preset == "bench1080":
        if args.faces < 1:
            raise UserError(f"--faces {args.faces} must be at least 1")
        if args.images is not None:
            images = images_from_dir(args.images)
        else:
            sets = demo_sets()
            images = {
                label: list(dict.fromkeys(sets.video.get(label, []) + sets.enroll.get(label, [])))
                for label in sets.video.keys() | sets.enroll.keys()
            }
            images = dict(sorted(images.items()))
        return bench_scenario(
            images, size=size, fps=args.fps, seconds=seconds, n_faces=args.faces, seed=args.seed
        )
    images = images_from_dir(args.images) if args.images is not None else demo_sets().video
    return standard_scenario(images, size=size, fps=args.fps, seconds=seconds, seed=args.seed)


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _run(args: argparse.Namespace) -> int:
    if args.command == "run":
        from app.demo.run import run_demo

        return run_demo(args.pipeline_args)
    if args.command == "sets":
        sets = demo_sets(args.images)
        print(
            json.dumps(
                {
                    name: {label: [_shown(p) for p in paths] for label, paths in part.items()}
                    for name, part in (("enroll", sets.enroll), ("video", sets.video))
                },
                indent=2,
            )
        )
        return 0
    scenario = _scenario(args)
    start = time.perf_counter()
    out = write_video(scenario, args.out)
    elapsed = time.perf_counter() - start
    w, h = scenario.size
    print(
        f"wrote {out} ({scenario.n_frames} frames, {w}x{h} at {scenario.fps:g} fps, "
        f"{len(scenario.actors)} actors) and {ground_truth_path(out)} in {elapsed:.1f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    return run_cli(lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
