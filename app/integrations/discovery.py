"""MQTT topics and Home Assistant discovery payloads: pure functions of names and prefixes.

Home Assistant's MQTT discovery: a retained JSON config on `<discovery>/sensor/<node>/<object>/config`
creates an entity; an empty retained payload on the same topic removes it. One device stands for the
pipeline (`node` = the MQTT client id); each enrolled person gets a sensor whose state is the camera where
they were last seen (attributes: last_seen, similarity, ...), each camera a sensor whose state is the last
recognised face (`none` after the idle time). Availability of every entity follows `<prefix>/available`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from app import __version__ as APP_VERSION  # noqa: N812 - a constant

ONLINE, OFFLINE = "online", "offline"
NO_FACE = "none"  # a camera's state when no face was recognised for its idle time


def slug(name: str) -> str:
    """A topic- and file-safe id for a name: ASCII lower case, runs of other characters as one `_`.

    "Lin-Manuel Miranda" -> "lin_manuel_miranda"; a name with no ASCII letter or digit gets its code points.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
    return text or "_".join(f"{ord(c):x}" for c in name)


def availability_topic(prefix: str) -> str:
    return f"{prefix}/available"


def events_topic(prefix: str) -> str:
    return f"{prefix}/events"


def person_topic(prefix: str, name: str) -> str:
    return f"{prefix}/person/{slug(name)}"


def camera_topic(prefix: str, camera: str) -> str:
    return f"{prefix}/camera/{slug(camera)}/face"


def config_topic(discovery_prefix: str, node: str, object_id: str) -> str:
    return f"{discovery_prefix}/sensor/{slug(node)}/{object_id}/config"


def person_object_id(name: str) -> str:
    return f"person_{slug(name)}"


def camera_object_id(camera: str) -> str:
    return f"camera_{slug(camera)}_face"


def device(node: str) -> dict[str, Any]:
    return {
        "identifiers": [f"facepipe_{slug(node)}"],
        "name": f"Face recognition ({node})",
        "manufacturer": "facepipe",
        "model": "face recognition pipeline",
        "sw_version": APP_VERSION,
    }


def _sensor(prefix: str, node: str, object_id: str, name: str, state_topic: str) -> dict[str, Any]:
    return {
        "name": name,
        "object_id": f"{slug(node)}_{object_id}",
        "unique_id": f"{slug(node)}_{object_id}",
        "state_topic": state_topic,
        "availability_topic": availability_topic(prefix),
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device(node),
    }


def person_config(prefix: str, node: str, name: str) -> dict[str, Any]:
    """Sensor of one enrolled person: state = camera last seen; attributes from the person topic."""
    topic = person_topic(prefix, name)
    return {
        **_sensor(prefix, node, person_object_id(name), name, topic),
        "value_template": "{{ value_json.camera }}",
        "json_attributes_topic": topic,
        "icon": "mdi:account",
    }


def camera_config(prefix: str, node: str, camera: str) -> dict[str, Any]:
    """Sensor of one camera: state = the last recognised name, `none` once the camera has been idle."""
    topic = camera_topic(prefix, camera)
    return {
        **_sensor(prefix, node, camera_object_id(camera), f"{camera} last face", topic),
        "value_template": "{{ value_json.name or '" + NO_FACE + "' }}",
        "json_attributes_topic": topic,
        "icon": "mdi:face-recognition",
    }


def discovery_messages(
    prefix: str, discovery_prefix: str, node: str, persons: list[str], cameras: list[str]
) -> dict[str, str]:
    """{config topic: retained JSON payload} for every person and camera."""
    out = {}
    for name in persons:
        out[config_topic(discovery_prefix, node, person_object_id(name))] = json.dumps(
            person_config(prefix, node, name)
        )
    for camera in cameras:
        out[config_topic(discovery_prefix, node, camera_object_id(camera))] = json.dumps(
            camera_config(prefix, node, camera)
        )
    return out


def node_config_filter(discovery_prefix: str, node: str) -> str:
    """Subscription matching every config this node published (to remove those of removed persons)."""
    return f"{discovery_prefix}/sensor/{slug(node)}/+/config"
