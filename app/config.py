"""One validated settings object, read from defaults < `.env` < environment < CLI flags.

Every setting has an environment name, `FACEPIPE_` + the field name in upper case, documented in
`.env.example` (regenerate it with `python -m app.config > .env.example`). The prefix keeps unrelated
variables (`OUTPUT`, `GUI`, `THREADS`...) from changing a run. The original project's documented names
`VIDEO_SOURCE`, `QDRANT_HOST` and `QDRANT_PORT` are read without the prefix too; every other unprefixed
name is still read for one release, with a warning. An unknown key in `.env` is an error naming the
closest valid key. Bad values raise `ConfigError` with one line naming the setting, the value and what is
accepted; every numeric setting has a lower and an upper bound.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from app.errors import UserError, one_line
from app.inference.interface import BACKENDS
from app.inference.spec import EMBEDDER_KINDS
from app.url_masking import mask_url

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "FACEPIPE_"
# The original project documented these names; they keep working without the prefix and without a warning.
UNPREFIXED_NAMES = ("video_source", "qdrant_host", "qdrant_port")


class ConfigError(UserError):
    """A setting that cannot be used; the message names it and the fix."""


def _meta(help_text: str, **extra: Any) -> dict[str, Any]:
    return {"help": help_text, **extra}


@dataclass(frozen=True)
class Settings:
    video_source: str = field(
        default="data/demo/demo.mp4",
        metadata=_meta("Video file, rtsp:// or http(s):// URL, or webcam index (0, 1, ...)"),
    )
    detector_model: Path = field(
        default=Path("checkpoints/retinaface_mnet025.onnx"),
        metadata=_meta("RetinaFace ONNX (biubug6 format: mobilenet0.25 or ResNet-50) or TensorRT engine"),
    )
    embedder_model: Path = field(
        default=Path("checkpoints/dlib_resnet.onnx"),
        metadata=_meta("Face embedder ONNX: dlib ResNet (default) or an ArcFace R50/R100"),
    )
    embedder: str = field(
        default="auto",
        metadata=_meta(
            "Embedder kind: auto (from input size and output), dlib, arcface or mobilefacenet",
            choices=EMBEDDER_KINDS,
        ),
    )
    backend: str = field(
        default="onnxruntime",
        metadata=_meta("Inference backend: onnxruntime, torch or tensorrt", choices=BACKENDS),
    )
    det_size: int = field(
        default=640,
        metadata=_meta("Detector input side in pixels (frames are letterboxed)", lo=32, hi=4096),
    )
    det_threshold: float = field(
        default=0.6, metadata=_meta("Minimum detector score for a face", lo=0.0, hi=1.0)
    )
    nms_threshold: float = field(
        default=0.4, metadata=_meta("IoU above which overlapping boxes merge", lo=0.0, hi=1.0)
    )
    match_threshold: float | None = field(
        default=None,
        metadata=_meta(
            "Similarity needed to name a face (empty = the embedder's measured default)", lo=-1.0, hi=1.0
        ),
    )
    qdrant_path: Path = field(
        default=Path("data/gallery"), metadata=_meta("Folder of the embedded Qdrant gallery")
    )
    qdrant_host: str | None = field(
        default=None, metadata=_meta("Qdrant server host; empty = embedded gallery")
    )
    qdrant_port: int = field(default=6333, metadata=_meta("Qdrant server port", lo=1, hi=65535))
    qdrant_api_key: str | None = field(default=None, metadata=_meta("Qdrant server API key", secret=True))
    qdrant_https: bool = field(default=False, metadata=_meta("Use https for the Qdrant server"))
    qdrant_collection: str = field(default="faces", metadata=_meta("Qdrant collection name"))
    fps_target: float = field(
        default=0.0, metadata=_meta("Playback FPS for files; 0 = the file's own FPS", lo=0.0, hi=1000.0)
    )
    max_speed: bool = field(default=False, metadata=_meta("Read files as fast as the pipeline goes"))
    gui: bool = field(default=True, metadata=_meta("Show the OpenCV window"))
    output: Path | None = field(default=None, metadata=_meta("Write the annotated video to this .mp4"))
    events: Path | None = field(default=None, metadata=_meta("Write recognition events (JSON lines) here"))
    tracks_out: Path | None = field(
        default=None, metadata=_meta("Write per-frame faces here: .jsonl, or .csv for MOTChallenge")
    )
    threads: int = field(
        default=0, metadata=_meta("Threads per ONNX Runtime session; 0 = automatic", lo=0, hi=256)
    )
    log_level: str = field(default="WARNING", metadata=_meta("Log level", choices=LOG_LEVELS))
    ring_slots: int = field(default=8, metadata=_meta("Frame slots in the shared-memory ring", lo=3, hi=256))
    track_high_thresh: float = field(
        default=0.6, metadata=_meta("Tracker: detections above this start/extend tracks", lo=0.0, hi=1.0)
    )
    track_buffer: int = field(
        default=30, metadata=_meta("Tracker: frames (at 30 FPS) a lost track is kept", lo=1, hi=9000)
    )
    track_match_thresh: float = field(
        default=0.8, metadata=_meta("Tracker: IoU-distance gate of the first association", lo=0.0, hi=1.0)
    )
    # Cameras: several streams in one run
    cameras_file: Path | None = field(
        default=None,
        metadata=_meta("Cameras file (TOML, one [[camera]] table per stream); empty = VIDEO_SOURCE alone"),
    )
    min_face: int = field(
        default=0,
        metadata=_meta(
            "Smallest face to keep: short side of its box in pixels; 0 = no minimum", lo=0, hi=4096
        ),
    )
    # MQTT, Home Assistant discovery, Prometheus metrics and face snapshots (all off unless configured)
    mqtt_host: str | None = field(
        default=None, metadata=_meta("MQTT broker host; empty = no MQTT (events, states, availability)")
    )
    mqtt_port: int = field(
        default=1883, metadata=_meta("MQTT broker port (8883 is usual for TLS)", lo=1, hi=65535)
    )
    mqtt_user: str | None = field(default=None, metadata=_meta("MQTT user name"))
    mqtt_password: str | None = field(default=None, metadata=_meta("MQTT password", secret=True))
    mqtt_tls: bool = field(default=False, metadata=_meta("Connect to the MQTT broker over TLS"))
    mqtt_topic_prefix: str = field(default="facepipe", metadata=_meta("First level of every MQTT topic"))
    mqtt_client_id: str = field(
        default="facepipe", metadata=_meta("MQTT client id; also the Home Assistant device id")
    )
    mqtt_buffer: int = field(
        default=10000,
        metadata=_meta(
            "MQTT messages kept while the broker is away (then the oldest are dropped)", lo=10, hi=1000000
        ),
    )
    ha_discovery: bool = field(default=True, metadata=_meta("Publish Home Assistant MQTT discovery configs"))
    ha_discovery_prefix: str = field(
        default="homeassistant", metadata=_meta("Home Assistant discovery topic prefix")
    )
    camera_idle_s: float = field(
        default=60.0,
        metadata=_meta(
            "Seconds without a recognised face before a camera's last face is cleared", lo=1.0, hi=86400.0
        ),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_meta("Serve Prometheus metrics on this port (/metrics); empty = off", lo=1, hi=65535),
    )
    snapshots_dir: Path | None = field(
        default=None, metadata=_meta("Write a JPEG face crop of every recognition event here; empty = off")
    )
    snapshot_full_frame: bool = field(
        default=False, metadata=_meta("Also write the whole frame, boxes drawn, with every snapshot")
    )
    snapshot_retain_days: float = field(
        default=7.0, metadata=_meta("Delete snapshots older than this many days", lo=0.01, hi=3650.0)
    )
    snapshot_retain_count: int = field(
        default=10000,
        metadata=_meta("Keep at most this many snapshots (oldest deleted first)", lo=1, hi=10000000),
    )
    # Unknown faces: keeping, grouping and privacy
    keep_unknown: bool = field(
        default=True, metadata=_meta("Keep the best faces of unknown tracks for review (enroll unknowns)")
    )
    unknown_retain_days: float = field(
        default=30.0, metadata=_meta("Days an unknown face is kept before it is dropped", lo=0.01, hi=3650.0)
    )
    unknown_max_faces: int = field(
        default=10000, metadata=_meta("Most unknown faces kept; the oldest go first", lo=10, hi=1_000_000)
    )
    unknown_min_quality: float = field(
        default=0.3, metadata=_meta("Face quality (0..1) needed to keep an unknown face", lo=0.0, hi=1.0)
    )
    unknown_faces_per_track: int = field(
        default=5, metadata=_meta("Best faces kept per unknown track", lo=1, hi=50)
    )
    blur_unknown: bool = field(
        default=False, metadata=_meta("Blur faces that are not known in the window and the output video")
    )
    # Multi-camera processes
    detect_workers: int = field(
        default=1,
        metadata=_meta(
            "Detector processes the cameras are spread over (each batches its cameras' frames)", lo=1, hi=8
        ),
    )
    tracking_workers: int = field(
        default=0,
        metadata=_meta(
            "Tracking processes the cameras are spread over; 0 = one per 4 cameras, at most a quarter of "
            "the CPUs",
            lo=0,
            hi=64,
        ),
    )

    # Output safety
    overwrite: bool = field(
        default=False, metadata=_meta("Replace output files that exist already (else the run refuses)")
    )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """Settings as plain values for logs, with secrets and URL credentials hidden."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        out["video_source"] = mask_url(self.video_source)
        if self.qdrant_host:
            out["qdrant_host"] = mask_url(self.qdrant_host)
        if self.mqtt_host:
            out["mqtt_host"] = mask_url(self.mqtt_host)
        return out


def env_name(field_name: str) -> str:
    """The environment / `.env` name of a setting: FACEPIPE_DET_SIZE for det_size."""
    return ENV_PREFIX + field_name.upper()


def legacy_env_name(field_name: str) -> str:
    """The unprefixed name of earlier releases: DET_SIZE for det_size."""
    return field_name.upper()


_warned: set[str] = set()


def _warn_legacy(key: str, field_name: str, where: str) -> None:
    if field_name in UNPREFIXED_NAMES or key in _warned:
        return
    _warned.add(key)
    print(
        f"warning: {where} {key} is an old setting name, read for one more release: rename it "
        f"{env_name(field_name)}",
        file=sys.stderr,
    )


def _field_for_key(key: str, names: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(field name, whether the key is an unprefixed legacy name) of a `.env`/environment key."""
    upper = key.strip().upper()
    if upper.startswith(ENV_PREFIX) and upper[len(ENV_PREFIX) :].lower() in names:
        return upper[len(ENV_PREFIX) :].lower(), False
    if upper.lower() in names:
        return upper.lower(), True
    return None, False


def closest_setting(key: str) -> str | None:
    """The valid environment name nearest to a misspelt `key`, or None when nothing is close."""
    valid = [env_name(f.name) for f in dataclasses.fields(Settings)]
    upper = key.strip().upper()
    wanted = upper if upper.startswith(ENV_PREFIX) else ENV_PREFIX + upper
    found = difflib.get_close_matches(wanted, valid, n=1, cutoff=0.75)
    return found[0] if found else None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parser_for(annotation: str) -> Callable[[str], Any]:
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "bool": _parse_bool, "Path": Path, "str": str}[base]


def _convert(f: dataclasses.Field, raw: Any, origin: str, key: str | None = None) -> Any:
    """`raw` as the field's type, validated; messages name the setting as the user wrote it (`key`)."""
    shown = key or env_name(f.name)
    optional = "None" in str(f.type)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = _parser_for(str(f.type))(text)
        except ValueError as exc:
            kind = str(f.type).replace(" | None", "")
            raise ConfigError(
                f"{origin} {shown}={raw!r} is not a valid {kind} ({one_line(exc)}); fix it in "
                ".env, the environment or the command line"
            ) from None
    else:
        value = raw
        if value is None and not optional:
            raise ConfigError(f"{origin} {shown} must not be empty")
        if isinstance(value, str) and str(f.type).startswith("Path"):
            value = Path(value)
    _validate(f, value, origin, shown)
    return value


def _validate(f: dataclasses.Field, value: Any, origin: str, name: str) -> None:
    if value is None:
        return
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None:
        if f.name == "log_level":
            value = str(value).upper()
        if value not in choices:
            raise ConfigError(f"{origin} {name}={value!r} is not one of: {', '.join(choices)}")
    if isinstance(value, float) and value != value:  # NaN passes every comparison
        raise ConfigError(f"{origin} {name}={value!r} is not a number")
    problem = range_problem(f, value)
    if problem is not None:
        raise ConfigError(f"{origin} {name}={value!r} {problem}")


def range_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is outside the field's lo/hi bounds ("is out of range: it must be ..."), or None."""
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        return f"is out of range: it must be {bounds}"
    return None


def load_settings(
    overrides: Mapping[str, object] | None = None, env_file: Path | None = Path(".env")
) -> Settings:
    """Build the settings: field defaults, then `.env`, then the environment, then `overrides` (CLI flags)."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if env_file is not None and env_file.is_file():
        for key, raw in _read_env_file(env_file).items():
            name, legacy = _field_for_key(key, fields)
            if name is None:
                hint = closest_setting(key)
                fix = f"did you mean {hint}?" if hint else "see .env.example for the valid names"
                raise ConfigError(f"{env_file}: unknown setting {key!r}: {fix}")
            if legacy:
                _warn_legacy(key, name, f"{env_file}:")
            if raw is not None and raw.strip():
                values[name] = _convert(fields[name], raw, f"{env_file}:", key.strip())
    for name, f in fields.items():
        key = env_name(name)
        raw = os.environ.get(key)
        if raw is None and os.environ.get(legacy_env_name(name), "").strip():
            key = legacy_env_name(name)
            raw = os.environ[key]
            _warn_legacy(key, name, "environment variable")
        # An empty variable means "use the default", as an empty line in .env does.
        if raw is not None and raw.strip():
            values[name] = _convert(f, raw, "environment", key)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _convert(fields[name], raw, "option")
    if "log_level" in values:
        values["log_level"] = str(values["log_level"]).upper()
    return Settings(**values)


def _read_env_file(path: Path) -> dict[str, str | None]:
    try:
        return dict(dotenv_values(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path} ({one_line(exc)}): fix or remove it") from None


def describe_settings() -> list[tuple[str, str, str]]:
    """(ENV_NAME, default, help) for every setting: the source of `.env.example`."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = "" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        rows.append((env_name(f.name), shown, f.metadata["help"]))
    return rows


ENV_EXAMPLE_HEADER = """\
# Settings of the face recognition pipeline. Copy to .env and edit; environment variables override .env,
# and command-line flags override both. Empty means the default shown in the comment.
# Generated by `python -m app.config > .env.example`. Names carry the FACEPIPE_ prefix; VIDEO_SOURCE,
# QDRANT_HOST and QDRANT_PORT are also read without it.
"""


def env_example_text() -> str:
    """The text of `.env.example`: every setting with its help and default."""
    parts = [ENV_EXAMPLE_HEADER]
    for name, default, help_text in describe_settings():
        # The source is the one setting shown filled in, so a copied .env runs the demo video as before.
        value = default if name == env_name("video_source") else ""
        parts.append(f"\n# {help_text} (default: {default or 'empty'})\n{name}={value}\n")
    return "".join(parts)


def _main(argv: list[str]) -> int:
    """`python -m app.config` prints `.env.example`; `python -m app.config video-source` prints the source
    set in `.env` or the environment (empty when it is the default), for dev.sh's choice of the main job."""
    from app.cli_exit import run_cli

    def command() -> int:
        if argv == ["video-source"]:
            source = load_settings().video_source
            print(source if source != Settings.video_source else "")
        elif not argv:
            sys.stdout.write(env_example_text())
        else:
            raise ConfigError(f"unknown arguments {' '.join(argv)!r}: use no argument or video-source")
        return 0

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
