"""File operations the embedded gallery's crash safety rests on: atomic JSON replace, sparse folder copy.

Qdrant's segment files are sparse (a 32 MiB chunk for a few vectors holds ~100 KiB of data), so the copy
made for every change reads and writes only their data ranges (SEEK_DATA / SEEK_HOLE) and leaves holes as
holes; where the system has no hole seeking it copies the bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_COPY_BLOCK = 1 << 20


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` by `data` in one step: a reader (or a crash) sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the data in a file, holes left out; the whole file where holes cannot be sought."""
    if not hasattr(os, "SEEK_DATA"):
        return [(0, size)] if size else []
    ranges, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, end))
        offset = end
    return ranges


def sparse_copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _data_ranges(fin.fileno(), size):
            fin.seek(start)
            fout.seek(start)
            remaining = end - start
            while remaining > 0:
                block = fin.read(min(_COPY_BLOCK, remaining))
                if not block:
                    break
                fout.write(block)
                remaining -= len(block)
        fout.truncate(size)
        fout.flush()
        os.fsync(fout.fileno())


def sparse_copytree(src: Path, dst: Path) -> None:
    """Copy folder `src` to the new folder `dst`, files fsynced, holes kept."""
    shutil.copytree(src, dst, copy_function=lambda s, d: sparse_copy_file(Path(s), Path(d)))
    for folder, _dirs, _files in os.walk(dst):
        fsync_dir(Path(folder))
