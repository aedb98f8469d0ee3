import dataclasses
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, describe_settings, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)


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
