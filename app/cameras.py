"""Cameras as configuration: which streams a run serves, each with its own per-stream settings.

Where the camera list comes from, first match wins:
1. `--source` flags: one plain `--source URL` is one camera named "default"; several need a name each
   (`--source door=rtsp://... --source yard=rtsp://...`).
2. A cameras file (`--cameras FILE` / `CAMERAS_FILE`): TOML, one `[[camera]]` table per stream.
3. `VIDEO_SOURCE`: one camera named "default".

A camera may override the per-stream settings `fps_target`, `det_threshold` and `min_face`; what it leaves
out comes from `Settings`. Values are checked against the same bounds as those settings. Every mistake is one
`ConfigError` line naming the file, the table and the key. Relative file sources are relative to the working
directory, as `--source` and `VIDEO_SOURCE` are, not to the cameras file.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import ConfigError, Settings, range_problem, setting_type
from app.url_masking import mask_url

DEFAULT_CAMERA = "default"
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
NAME_RULE = "1-32 letters, digits, '_' or '-'"
# Per-camera overrides: each is the Settings field of the same name, with its type and bounds.
OVERRIDE_KEYS = ("fps_target", "det_threshold", "min_face")
CAMERA_KEYS = ("name", "source", *OVERRIDE_KEYS, "enabled")
TABLE = "camera"


@dataclass(frozen=True, repr=False)
class CameraConfig:
    name: str  # unique (case-insensitively: it names output files); NAME_RE
    source: str  # file path, stream URL or webcam index, as `--source` takes it
    fps_target: float | None = None  # None = the global setting
    det_threshold: float | None = None
    min_face: int | None = None  # smallest face box short side in pixels
    enabled: bool = True

    @property
    def display_source(self) -> str:
        """The source with URL credentials masked: safe for logs and messages."""
        return mask_url(self.source)

    def __repr__(self) -> str:  # never show a camera password in a log or a traceback
        overrides = "".join(
            f", {key}={getattr(self, key)!r}" for key in OVERRIDE_KEYS if getattr(self, key) is not None
        )
        disabled = "" if self.enabled else ", enabled=False"
        return f"CameraConfig(name={self.name!r}, source={self.display_source!r}{overrides}{disabled})"


def valid_camera_name(text: str) -> bool:
    return NAME_RE.fullmatch(text) is not None


def effective_fps_target(camera: CameraConfig, settings: Settings) -> float:
    return settings.fps_target if camera.fps_target is None else camera.fps_target


def effective_det_threshold(camera: CameraConfig, settings: Settings) -> float:
    return settings.det_threshold if camera.det_threshold is None else camera.det_threshold


def effective_min_face(camera: CameraConfig, settings: Settings) -> int:
    return settings.min_face if camera.min_face is None else camera.min_face


def camera_settings(camera: CameraConfig, settings: Settings) -> Settings:
    """`settings` as this camera sees them: its source and its resolved per-stream values."""
    return settings.replace(
        video_source=camera.source,
        fps_target=effective_fps_target(camera, settings),
        det_threshold=effective_det_threshold(camera, settings),
        min_face=effective_min_face(camera, settings),
    )


def load_cameras_file(path: Path) -> list[CameraConfig]:
    """Every `[[camera]]` table of a TOML file, enabled or not, checked; ConfigError on the first mistake."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"cameras file {path} does not exist; check --cameras (or CAMERAS_FILE)")
    if not path.is_file():
        raise ConfigError(f"cameras file {path} is not a file; pass a .toml file to --cameras")
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (at line {line}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read cameras file {path}: {exc.strerror or exc}") from None
    extra = [key for key in data if key != TABLE]
    if extra:
        raise ConfigError(
            f"{path}: unknown key or table {extra[0]!r} (the file holds only [[camera]] tables)"
        )
    tables = data.get(TABLE)
    if tables is None or tables == []:
        raise ConfigError(f"{path}: no [[camera]] table; add one per camera (see cameras.example.toml)")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: 'camera' must be [[camera]] tables, one per camera")
    cameras: list[CameraConfig] = []
    seen: dict[str, int] = {}
    for number, table in enumerate(tables, start=1):
        camera = _camera_from_table(table, f"{path}: [[camera]] #{number}")
        first = seen.setdefault(camera.name.lower(), number)
        if first != number:
            raise ConfigError(
                f"{path}: [[camera]] #{number} ({camera.name!r}): name {camera.name!r} is already used by "
                f"[[camera]] #{first}; names must be unique (case does not count: they name files)"
            )
        cameras.append(camera)
    return cameras


def _camera_from_table(table: Mapping[str, Any], where: str) -> CameraConfig:
    name = table.get("name")
    # Only a valid name is quoted in the label: an invalid one may be anything, a URL with a password too.
    label = f"{where} ({name!r})" if isinstance(name, str) and valid_camera_name(name) else where
    unknown = [key for key in table if key not in CAMERA_KEYS]
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r} (valid keys: {', '.join(CAMERA_KEYS)})")
    if name is None:
        raise ConfigError(f"{label}: missing key 'name' (a unique name such as \"door\")")
    if not isinstance(name, str) or not valid_camera_name(name):
        raise ConfigError(f"{label}: name = {_toml_value(name)} is not a valid camera name; use {NAME_RULE}")
    source = table.get("source")
    if source is None:
        raise ConfigError(f"{label}: missing key 'source' (a video file, stream URL or webcam index)")
    if isinstance(source, int) and not isinstance(source, bool) and source >= 0:
        source = str(source)  # `source = 0`: a webcam index
    if not isinstance(source, str):
        raise ConfigError(
            f"{label}: source = {_toml_value(source)} must be text (a file or URL) or a webcam index"
        )
    if not source.strip():
        raise ConfigError(f"{label}: source must not be empty")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{label}: enabled = {_toml_value(enabled)} must be true or false")
    overrides: dict[str, Any] = {
        key: _override(key, table[key], label) for key in OVERRIDE_KEYS if key in table
    }
    return CameraConfig(name=name, source=source.strip(), enabled=enabled, **overrides)


_SETTING_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _override(key: str, value: Any, label: str) -> float | int:
    """A per-camera value of the Settings field `key`: its type (int or float) and its bounds."""
    f = _SETTING_FIELDS[key]
    kind = setting_type(key)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int and not (is_number and isinstance(value, int)):
        raise ConfigError(f"{label}: {key} = {_toml_value(value)} must be a whole number")
    if kind is float and not is_number:
        raise ConfigError(f"{label}: {key} = {_toml_value(value)} must be a number")
    problem = range_problem(f, value)
    if problem is not None:
        raise ConfigError(f"{label}: {key} = {_toml_value(value)} {problem}")
    return float(value) if kind is float else value


def _toml_value(value: Any) -> str:
    """A value as it reads in the file: strings quoted, booleans lower-case, URLs masked."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + mask_url(value) + '"'
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


def split_source_flag(value: str) -> tuple[str | None, str]:
    """`NAME=URL` -> (NAME, URL) when the text before the first "=" is a camera name, else (None, value).

    So `rtsp://host/x?ch=1` stays a URL: "rtsp://host/x?ch" is no camera name.
    """
    head, sep, rest = value.partition("=")
    if sep and valid_camera_name(head):
        return head, rest
    return None, value


def parse_source_flags(values: Sequence[str]) -> list[CameraConfig]:
    """Repeatable `--source [NAME=]URL`: one unnamed source is camera "default"; several need names."""
    parsed = [split_source_flag(value) for value in values]
    if len(parsed) > 1:
        unnamed = sum(1 for name, _ in parsed if name is None)
        if unnamed:
            raise ConfigError(
                f"--source is given {len(parsed)} times and {unnamed} without a name; name each camera: "
                "--source NAME=URL (e.g. --source door=rtsp://... --source yard=0)"
            )
    cameras: list[CameraConfig] = []
    seen: set[str] = set()
    for name, source in parsed:
        name = DEFAULT_CAMERA if name is None else name
        if not source.strip():
            raise ConfigError(f"--source {name}= has no source after '='; use --source {name}=URL")
        if name.lower() in seen:
            raise ConfigError(
                f"--source: camera name {name!r} is given twice; names must be unique (case does not count)"
            )
        seen.add(name.lower())
        cameras.append(CameraConfig(name=name, source=source.strip()))
    return cameras


def resolve_cameras(settings: Settings, source_flags: Sequence[str] | None = None) -> list[CameraConfig]:
    """The enabled cameras of this run: `--source` flags, else the cameras file, else VIDEO_SOURCE."""
    if source_flags:
        cameras, origin = parse_source_flags(source_flags), "--source"
    elif settings.cameras_file is not None:
        cameras, origin = load_cameras_file(settings.cameras_file), str(settings.cameras_file)
    else:
        cameras, origin = [CameraConfig(DEFAULT_CAMERA, settings.video_source)], "VIDEO_SOURCE"
    enabled = [camera for camera in cameras if camera.enabled]
    if not enabled:
        raise ConfigError(f"{origin}: every camera is disabled (enabled = false); enable at least one")
    return enabled
