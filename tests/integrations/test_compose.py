"""compose.yaml and the Dockerfile agree with the settings (no Docker engine runs here: this is the check)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from app.config import Settings, env_name, load_settings

REPO = Path(__file__).resolve().parents[2]
SETTING_NAMES = {env_name(f.name): f.name for f in dataclasses.fields(Settings)}


def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def interpolated(value: object) -> str:
    """A compose value with `${NAME:-default}` replaced by its default, as compose does when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def app_environment() -> dict[str, str]:
    return {k: interpolated(v) for k, v in compose()["services"]["facepipe"]["environment"].items()}


def test_compose_has_the_app_a_qdrant_server_on_6334_and_mosquitto():
    services = compose()["services"]
    assert set(services) == {"facepipe", "qdrant", "mosquitto"}
    assert "6334:6333" in services["qdrant"]["ports"]
    storage = [v for v in services["qdrant"]["volumes"] if v.endswith(":/qdrant/storage")]
    assert storage and storage[0].split(":")[0] in compose()["volumes"]  # a named volume
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto")
    assert services["facepipe"]["build"] == "." and (REPO / "Dockerfile").is_file()


def test_every_environment_name_of_the_app_is_a_setting_and_its_value_is_valid():
    environment = app_environment()
    unknown = set(environment) - set(SETTING_NAMES)
    assert not unknown, f"not settings: {unknown}"
    settings = load_settings({SETTING_NAMES[k]: v for k, v in environment.items()}, env_file=None)
    assert settings.gui is False and settings.metrics_port is not None


def test_the_app_is_wired_to_the_other_services_and_publishes_its_metrics_port():
    services = compose()["services"]
    settings = load_settings({SETTING_NAMES[k]: v for k, v in app_environment().items()}, env_file=None)
    assert settings.qdrant_host == "qdrant" and settings.qdrant_port == 6333  # the container port
    assert settings.mqtt_host == "mosquitto"
    listener = re.search(r"^listener (\d+)", (REPO / "deploy" / "mosquitto.conf").read_text(), re.MULTILINE)
    assert listener and int(listener.group(1)) == settings.mqtt_port
    assert f"{settings.metrics_port}:{settings.metrics_port}" in services["facepipe"]["ports"]
    assert set(services["facepipe"]["depends_on"]) == {"qdrant", "mosquitto"}
    data = [v for v in services["facepipe"]["volumes"] if v.split(":")[0] in compose()["volumes"]]
    assert data and str(settings.snapshots_dir).startswith(data[0].split(":")[1])


def test_the_image_fetches_the_models_at_build_time_and_names_no_package_index():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "python -m app.models fetch" in dockerfile
    assert "poetry install --only main" in dockerfile
    assert "://" not in dockerfile  # the index is the one pip uses, read at build time
