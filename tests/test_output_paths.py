"""Outputs never destroy an input or each other: the pure check, and `app.main` refusing before any stage."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import UserError
from app.output_paths import check_output_paths
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[1]
HAMILTON = SHARED_FACES / "short_hamilton_clip.mp4"


def test_an_output_naming_the_input_is_refused(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x")
    with pytest.raises(UserError, match="is the input .* writing it would destroy the input"):
        check_output_paths([("--source", video)], [("--output", video)], overwrite=True)


def test_the_same_file_through_a_symlink_a_hard_link_or_dots_is_refused(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(video)
    os.link(video, tmp_path / "hard.mp4")
    (tmp_path / "sub").mkdir()
    for alias in (tmp_path / "link.mp4", tmp_path / "hard.mp4", tmp_path / "sub" / ".." / "in.mp4"):
        with pytest.raises(UserError, match="destroy the input"):
            check_output_paths([("--source", video)], [("--output", alias)], overwrite=True)


def test_two_outputs_in_one_file_are_refused(tmp_path):
    same = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match="--tracks-out .* and --events .* are the same file"):
        check_output_paths([], [("--events", same), ("--tracks-out", same)])


def test_a_folder_or_a_path_under_a_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="is a folder: name a file inside it"):
        check_output_paths([], [("--output", tmp_path)])
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_paths([], [("--output", tmp_path / "f" / "out.mp4")])


def test_an_existing_output_needs_overwrite(tmp_path):
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists: choose another name, or pass --overwrite"):
        check_output_paths([], [("--output", kept)])
    check_output_paths([], [("--output", kept)], overwrite=True)
    check_output_paths([], [("--output", tmp_path / "new.mp4")])


def run_main(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VIDEO_SOURCE", None)
    return subprocess.run(
        [sys.executable, "-m", "app.main", "--env-file", str(tmp_path / "none.env"), "--no-gui", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and result.stdout == "", result.stderr
    return lines[0]


def test_main_refuses_to_write_the_video_over_its_source(tmp_path):
    source = tmp_path / "clip.mp4"
    source.write_bytes(HAMILTON.read_bytes())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    result = run_main(tmp_path, "--source", str(source), "--output", str(source), "--overwrite")
    assert one_error_line(result) == (
        f"error: --output {source} is the input {source} (--source): writing it would destroy the input; "
        "name another file"
    )
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest


def test_main_refuses_a_folder_as_output_before_any_stage_starts(tmp_path):
    line = one_error_line(run_main(tmp_path, "--source", str(HAMILTON), "--output", str(tmp_path)))
    assert line == f"error: --output {tmp_path} is a folder: name a file inside it, e.g. {tmp_path / 'out'}"


def test_main_refuses_an_existing_output_and_an_unknown_video_format(tmp_path):
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(b"precious")
    line = one_error_line(run_main(tmp_path, "--source", str(HAMILTON), "--output", str(kept)))
    assert "already exists" in line and kept.read_bytes() == b"precious"
    line = one_error_line(run_main(tmp_path, "--source", str(HAMILTON), "--output", str(tmp_path / "o.webm")))
    assert line.startswith("error: unknown video format")
