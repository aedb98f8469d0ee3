import dataclasses
from pathlib import Path

import pytest

from app.config import (
    ConfigError,
    Settings,
    describe_settings,
    env_example_text,
    env_name,
    legacy_env_name,
    load_settings,
    setting_type,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(env_name(f.name), raising=False)
        monkeypatch.delenv(legacy_env_name(f.name), raising=False)


def test_precedence_default_env_file_environment_cli(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("DET_THRESHOLD=0.7\nQDRANT_PORT=7000\nBACKEND=onnxruntime\n")
    assert load_settings(env_file=None).det_threshold == 0.6
    assert load_settings(env_file=env_file).det_threshold == 0.7
    monkeypatch.setenv("DET_THRESHOLD", "0.8")
    settings = load_settings(env_file=env_file)
    assert settings.det_threshold == 0.8 and settings.qdrant_port == 7000
    assert load_settings({"det_threshold": 0.9}, env_file=env_file).det_threshold == 0.9


def test_empty_values_mean_default(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DETECTOR_MODEL=\nMATCH_THRESHOLD=\n")
    settings = load_settings(env_file=env_file)
    assert settings.detector_model == Path("checkpoints/retinaface_mnet025.onnx")
    assert settings.match_threshold is None


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("DET_THRESHOLD", "abc", "DET_THRESHOLD='abc' is not a valid float"),
        ("BACKEND", "cuda", "BACKEND='cuda' is not one of: onnxruntime, torch, tensorrt"),
        ("QDRANT_PORT", "70000", "QDRANT_PORT=70000 is out of range"),
        ("GUI", "maybe", "GUI='maybe' is not a valid bool"),
    ],
)
def test_bad_values_give_one_line(tmp_path, name, value, fragment):
    env_file = tmp_path / ".env"
    env_file.write_text(f"{name}={value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=env_file)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_cli_overrides_are_validated():
    with pytest.raises(ConfigError, match="out of range"):
        load_settings({"det_threshold": 1.5}, env_file=None)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({"no_such": 1}, env_file=None)


def test_env_example_documents_every_setting():
    text = (REPO / ".env.example").read_text()
    for name, _default, _help in describe_settings():
        assert f"\n{name}=" in text, name


def test_redacted_settings_hide_credentials():
    url = "rtsp://admin:s3/cret@10.0.0.5:554/stream1"
    overrides = {"video_source": url, "qdrant_api_key": "key", "qdrant_host": "https://u:hidden@qdrant.local"}
    shown = load_settings(overrides, env_file=None).redacted()
    assert shown["video_source"] == "rtsp://***@10.0.0.5:554/stream1"
    assert shown["qdrant_host"] == "https://***@qdrant.local"
    assert "s3/cret" not in str(shown) and "hidden" not in str(shown) and shown["qdrant_api_key"] == "***"


def test_misspelt_env_file_key_is_an_error_naming_the_closest_key(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MATCH_THRESHOLDD=0.9\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=env_file)
    message = str(info.value)
    assert "unknown setting 'MATCH_THRESHOLDD'" in message and "FACEPIPE_MATCH_THRESHOLD" in message
    assert "\n" not in message


def test_unrelated_env_file_key_is_an_error(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("FACEPIPE_DET_SIZE=320\nSOMETHING_ELSE=1\n")
    with pytest.raises(ConfigError, match="unknown setting 'SOMETHING_ELSE'"):
        load_settings(env_file=env_file)


def test_prefixed_environment_names_are_read(monkeypatch):
    monkeypatch.setenv("FACEPIPE_OUTPUT", "x.mp4")
    monkeypatch.setenv("FACEPIPE_THREADS", "3")
    settings = load_settings(env_file=None)
    assert settings.output == Path("x.mp4") and settings.threads == 3


def test_old_names_still_work_for_one_release_with_a_warning(monkeypatch, capsys):
    monkeypatch.setenv("THREADS", "2")
    assert load_settings(env_file=None).threads == 2
    err = capsys.readouterr().err
    assert "THREADS is an old setting name" in err and "FACEPIPE_THREADS" in err
    # The prefixed name wins over the old one.
    monkeypatch.setenv("FACEPIPE_THREADS", "4")
    assert load_settings(env_file=None).threads == 4


def test_documented_original_names_need_no_prefix_and_give_no_warning(monkeypatch, capsys):
    monkeypatch.setenv("VIDEO_SOURCE", "rtsp://cam/1")
    monkeypatch.setenv("QDRANT_HOST", "localhost")
    monkeypatch.setenv("QDRANT_PORT", "7000")
    settings = load_settings(env_file=None)
    assert settings.video_source == "rtsp://cam/1" and settings.qdrant_port == 7000
    assert settings.qdrant_host == "localhost" and capsys.readouterr().err == ""


def test_det_size_has_an_upper_bound(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("FACEPIPE_DET_SIZE=100000\n")
    with pytest.raises(ConfigError, match="DET_SIZE=100000 is out of range: it must be between 32 and 4096"):
        load_settings(env_file=env_file)


def test_every_numeric_setting_has_both_bounds():
    for f in dataclasses.fields(Settings):
        if setting_type(f.name) in (int, float):
            assert f.metadata.get("lo") is not None and f.metadata.get("hi") is not None, f.name


def test_nan_is_refused():
    with pytest.raises(ConfigError, match="not a number"):
        load_settings({"det_threshold": "nan"}, env_file=None)


def test_env_example_is_generated_from_the_settings():
    assert (REPO / ".env.example").read_text() == env_example_text()
