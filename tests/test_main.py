"""The pipeline CLI: flags to settings, and one-line errors with exit code 2 for bad input or setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import load_settings
from app.errors import UserError
from app.main import build_parser, overrides_from, preflight, source_flags_from
from tests.support.shared_data import HAMILTON

REPO = Path(__file__).resolve().parents[1]


def settings_for(*argv: str):
    return load_settings(overrides_from(build_parser().parse_args(list(argv))), env_file=None)


def test_flags_map_to_settings():
    argv = [
        *("--source", "rtsp://u:p@cam/1", "--no-gui", "--output", "o.mp4", "--events", "e.jsonl"),
        *("--tracks-out", "t.csv", "--max-speed", "--fps-target", "12.5", "--backend", "onnxruntime"),
        *("--detector", "det.onnx", "--embedder", "arcface", "--embedder-model", "emb.onnx"),
        *("--threshold", "0.5", "--det-threshold", "0.7", "--det-size", "480", "--gallery", "g"),
        *("--collection", "c", "--qdrant-host", "localhost", "--qdrant-port", "7000", "--qdrant-https"),
        *("--threads", "2", "--ring-slots", "6", "--log-level", "info"),
    ]
    s = settings_for(*argv)
    assert s.video_source == "rtsp://u:p@cam/1" and s.gui is False and s.max_speed is True
    assert (s.output, s.events, s.tracks_out) == (Path("o.mp4"), Path("e.jsonl"), Path("t.csv"))
    assert s.fps_target == 12.5 and s.backend == "onnxruntime" and s.detector_model == Path("det.onnx")
    assert s.embedder == "arcface" and s.embedder_model == Path("emb.onnx") and s.match_threshold == 0.5
    assert s.det_threshold == 0.7 and s.det_size == 480 and s.qdrant_path == Path("g")
    assert s.qdrant_collection == "c" and s.qdrant_host == "localhost" and s.qdrant_port == 7000
    assert s.qdrant_https is True and s.threads == 2 and s.ring_slots == 6 and s.log_level == "INFO"


def test_unset_flags_leave_defaults_and_embedder_takes_a_file():
    defaults = load_settings(env_file=None)
    s = settings_for("--embedder", "models/arc.onnx", "--detector-model", "d.onnx")
    assert s.embedder_model == Path("models/arc.onnx") and s.embedder == defaults.embedder
    assert s.detector_model == Path("d.onnx") and s.gui is True and s.max_speed is False
    assert overrides_from(build_parser().parse_args([])) == {}


def test_source_repeats_and_cameras_names_a_file():
    args = build_parser().parse_args(["--source", "door=a.mp4", "--source", "yard=rtsp://cam/1?ch=2"])
    assert source_flags_from(args) == ["door=a.mp4", "yard=rtsp://cam/1?ch=2"]
    assert load_settings(overrides_from(args), env_file=None).video_source == "a.mp4"
    assert source_flags_from(build_parser().parse_args([])) == []
    assert settings_for("--cameras", "cams.toml").cameras_file == Path("cams.toml")
    assert settings_for("--source", "rtsp://host/x?ch=1").video_source == "rtsp://host/x?ch=1"


def test_preflight_names_the_camera_only_when_there_are_several(tmp_path):
    settings = load_settings({"gui": False}, env_file=None)
    missing = str(tmp_path / "nowhere.mp4")
    alone = f"video file {missing} does not exist; check --source (or VIDEO_SOURCE)"
    with pytest.raises(UserError) as info:
        preflight(settings, [missing])
    assert str(info.value) == alone
    with pytest.raises(UserError) as info:
        preflight(settings, [f"door={HAMILTON}", f"yard={missing}"])
    assert str(info.value) == f"camera 'yard': {alone}"
    preflight(settings, [f"door={HAMILTON}", "yard=rtsp://cam/1"])  # both valid: no error


def run_cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("VIDEO_SOURCE", None)
    return subprocess.run(
        [sys.executable, "-m", "app.main", "--env-file", str(tmp_path / "none.env"), *argv],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_missing_file_is_one_line(tmp_path):
    result = run_cli(tmp_path, "--source", "nowhere/clip.mp4", "--no-gui")
    assert_one_error_line(result, "error: video file nowhere/clip.mp4 does not exist")


def test_bad_flag_value_is_one_line(tmp_path):
    result = run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--threshold", "high")
    assert_one_error_line(result, "--threshold='high' is not a valid float")


def test_gui_without_a_window_says_use_no_gui(tmp_path):
    env = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
    # Refused before any stage starts: the missing detector, which only the detect stage notices while
    # loading its model, is never reached.
    result = run_cli(tmp_path, "--source", str(HAMILTON), "--detector", str(tmp_path / "no.onnx"), env=env)
    assert_one_error_line(result, "--no-gui")


def test_missing_model_is_reported_by_its_stage(tmp_path):
    result = run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--detector", str(tmp_path / "no.onnx"))
    assert_one_error_line(result, "error: detect: model file", "no.onnx does not exist")


def test_unreachable_stream_masks_credentials(tmp_path):
    result = run_cli(tmp_path, "--source", "rtsp://admin:hunter2@127.0.0.1:9/cam", "--no-gui")
    assert_one_error_line(result, "error: capture: cannot open video stream rtsp://***@127.0.0.1:9/cam")
    assert "hunter2" not in result.stderr


def test_bad_cameras_file_is_one_line(tmp_path):
    cameras = tmp_path / "cameras.toml"
    cameras.write_text(f'[[camera]]\nname = "door"\nsource = "{HAMILTON}"\nfps = 5\n')
    result = run_cli(tmp_path, "--cameras", str(cameras), "--no-gui")
    assert_one_error_line(result, f"error: {cameras}: [[camera]] #1 ('door'): unknown key 'fps' (valid keys:")


def test_several_unnamed_sources_ask_for_names(tmp_path):
    result = run_cli(tmp_path, "--source", str(HAMILTON), "--source", str(HAMILTON), "--no-gui")
    assert_one_error_line(result, "error: --source is given 2 times", "--source NAME=URL")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_frames_must_be_positive(tmp_path, value):
    assert_one_error_line(run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--max-frames", value))
