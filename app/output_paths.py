"""Which output files a run may write: never over an input, never two outputs in one file, never a folder.

`check_output_paths` is pure (it reads the file system, writes nothing) and takes every input and output of
a run as (label, path) pairs, so a run with several cameras checks all of its per-camera files in one call.
Paths are compared after resolving symbolic links, `..` and `~`, and by inode where both exist (hard links).

An existing output file is refused unless `overwrite` is set (`--overwrite`): a run's outputs are often
named like the files a user keeps, and a typo must not cost a recording.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from app.errors import UserError

Labelled = tuple[str, Path]


def resolved(path: Path | str) -> Path:
    """The absolute path with `~`, `..` and symbolic links resolved (the file need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_output_paths(
    inputs: Sequence[Labelled], outputs: Sequence[Labelled], overwrite: bool = False
) -> None:
    """Raise UserError (one line naming the option and the fix) when an output would destroy an input or
    another output, is a folder, sits under a file, or exists while `overwrite` is off."""
    real_inputs = [(label, path, resolved(path)) for label, path in inputs]
    seen: list[tuple[str, Path, Path]] = []
    for label, path in outputs:
        real = resolved(path)
        for in_label, in_path, in_real in real_inputs:
            if _same_file(real, in_real):
                raise UserError(
                    f"{label} {path} is the input {in_path} ({in_label}): writing it would destroy the "
                    "input; name another file"
                )
        for other_label, other_path, other_real in seen:
            if _same_file(real, other_real):
                raise UserError(
                    f"{label} {path} and {other_label} {other_path} are the same file: give each its own name"
                )
        if real.is_dir():
            raise UserError(f"{label} {path} is a folder: name a file inside it, e.g. {Path(path) / 'out'}")
        blocker = next((p for p in real.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UserError(f"{label} {path}: {blocker} is a file, not a folder; choose another path")
        if real.exists() and not overwrite:
            raise UserError(
                f"{label} {path} already exists: choose another name, or pass --overwrite to replace it"
            )
        seen.append((label, path, real))
