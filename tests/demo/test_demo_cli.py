"""`python -m app.demo run` and `./dev.sh` pass the pipeline's flags through; the demo says where its
people are."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.demo.__main__ import parse_arguments
from app.demo.run import DEMO_GALLERY, closing_note, demo_arguments
from app.main import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--no-gui", "--max-frames", "30"],
        ["run", "--", "--no-gui", "--max-frames", "30"],
    ],
)
def test_demo_run_passes_flags_to_the_pipeline(argv):
    args = parse_arguments(argv)
    assert args.pipeline_args == ["--no-gui", "--max-frames", "30"]
    pipeline = build_parser().parse_args(demo_arguments(args.pipeline_args, headless=True))
    assert pipeline.gui is False and pipeline.max_frames == 30 and pipeline.overwrite is True


def test_other_demo_commands_still_refuse_unknown_flags(capsys):
    with pytest.raises(SystemExit) as info:
        parse_arguments(["sets", "--no-gui"])
    assert info.value.code == 2 and "unrecognized arguments: --no-gui" in capsys.readouterr().err


def test_the_closing_note_names_the_demo_gallery_and_how_to_use_your_own():
    note = closing_note()
    assert str(DEMO_GALLERY.relative_to(REPO)) in note and "data/gallery" in note
    assert "python -m app.enroll add NAME PHOTO" in note and "python -m app.main --source YOUR_VIDEO" in note


def _fake_tools(root: Path, log: Path) -> None:
    """A copy of dev.sh next to stand-ins for Poetry and the venv's Python that log their arguments."""
    shutil.copy(REPO / "dev.sh", root / "dev.sh")
    script = f'#!/bin/sh\necho "$0 $*" >> {log}\n'
    for tool in (root / ".tools" / "poetry" / "bin" / "poetry", root / ".venv" / "bin" / "python"):
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text(script)
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_dev_sh_with_only_flags_runs_the_demo_with_them(tmp_path):
    log = tmp_path / "calls.log"
    _fake_tools(tmp_path, log)
    env = {**os.environ, "POETRY_PYPI_MIRROR_URL": "http://127.0.0.1:9/simple", "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(tmp_path / "dev.sh"), "--no-gui", "--max-frames", "30"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[-1].endswith(".venv/bin/python -m app.demo run --no-gui --max-frames 30"), calls
