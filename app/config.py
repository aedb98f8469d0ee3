"""One validated settings object, read from defaults < `.env` < environment < CLI flags.

Every setting has an environment name, `FACEPIPE_` + the field name in upper case, documented in
`.env.example` (regenerate it with `python -m app.config > .env.example`). The prefix keeps unrelated
variables (`OUTPUT`, `GUI`, `THREADS`...) from changing a run. The original project's documented names
`VIDEO_SOURCE`, `QDRANT_HOST` and `QDRANT_PORT` are read without the prefix too; every other unprefixed
name is still read for one release, with a warning. An unknown key in `.env` is an error naming the
closest valid key. Bad values raise `ConfigError` with one line naming the setting, the value and what is
accepted; every numeric setting has a lower and an upper bound.

The command-line flags of the settings are made here too (`setting_flag`, `add_setting_flags`), from the
fields' types and metadata: each CLI names the settings it takes, so a flag means the same in every CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import numbers
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values

from app.errors import UserError, one_line
from app.inference.interface import BACKENDS
from app.inference.spec import EMBEDDER_KINDS
from app.url_masking import mask_url

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "FACEPIPE_"
# The original project documented these names; they keep working without the prefix and without a warning.
UNPREFIXED_NAMES = ("video_source", "qdrant_host", "qdrant_port")


T = TypeVar("T")


class ConfigError(UserError):
    """A setting that cannot be used; the message names it and the fix."""


def setting(default: T, help_text: str, **extra: Any) -> T:
    """A Settings field: its default, the help shown in `.env.example` and `--help`, and its metadata.

    `lo`/`hi`: bounds of a number; `choices`: the accepted words; `secret`: hidden in logs. The command-line
    flag of the setting (`--` + the name with dashes, or `flag`) is described by `setting_flag`; `flag_help`
    words it where the flag reads differently from the setting (`--no-gui`), `metavar` names its value,
    `repeat` lets it be given several times, `or_file` lets a value that is not one of the choices name a
    file for that other setting (`--embedder KIND|FILE`).
    """
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class Settings:
    video_source: str = setting(
        "data/demo/demo.mp4",
        "Video file, rtsp:// or http(s):// URL, or webcam index (0, 1, ...)",
        flag="--source",
        metavar="[NAME=]SOURCE",
        repeat=True,
        flag_help="Video file, rtsp:// or http(s):// URL (e.g. an MJPEG phone camera), or webcam index; "
        "repeat as --source NAME=URL for several cameras",
    )
    detector_model: Path = setting(
        Path("checkpoints/retinaface_mnet025.onnx"),
        "RetinaFace ONNX (biubug6 format: mobilenet0.25 or ResNet-50) or TensorRT engine",
        flag=("--detector", "--detector-model"),
    )
    embedder_model: Path = setting(
        Path("checkpoints/dlib_resnet.onnx"),
        "Face embedder ONNX: dlib ResNet (default) or an ArcFace R50/R100",
    )
    embedder: str = setting(
        "auto",
        "Embedder kind: auto (from input size and output), dlib, arcface or mobilefacenet",
        choices=EMBEDDER_KINDS,
        or_file="embedder_model",
        metavar="KIND|FILE",
        flag_help="Embedder kind: auto, dlib, arcface or mobilefacenet; or an embedder model file",
    )
    backend: str = setting(
        "onnxruntime", "Inference backend: onnxruntime, torch or tensorrt", choices=BACKENDS
    )
    det_size: int = setting(640, "Detector input side in pixels (frames are letterboxed)", lo=32, hi=4096)
    det_threshold: float = setting(0.6, "Minimum detector score for a face", lo=0.0, hi=1.0)
    # (measured with testbench/eval_identification.py --probe-face-px: the README's small-faces table)
    refine_below: int = setting(
        80,
        "Faces shorter than this (px) get their landmarks found again on an enlarged crop before they are "
        "embedded (better alignment of small faces); 0 = off",
        lo=0,
        hi=4096,
    )
    refine_model: Path | None = setting(
        None,
        "Detector ONNX that finds small faces again on their crops (REFINE_BELOW, REFIND_MISSED; one CPU "
        "thread in each tracking lane); default: the bundled mnet0.25 when present, else DETECTOR_MODEL",
    )
    refind_missed: bool = setting(
        True,
        "Small faces tracked on the last frame that the detector misses are looked for again on an enlarged "
        "crop where they were (REFINE_BELOW's crop detector; needs REFINE_BELOW > 0)",
    )
    nms_threshold: float = setting(0.4, "IoU above which overlapping boxes merge", lo=0.0, hi=1.0)
    match_threshold: float | None = setting(
        None,
        "Similarity needed to name a face (empty = the embedder's measured default)",
        lo=-1.0,
        hi=1.0,
        flag="--threshold",
    )
    qdrant_path: Path = setting(
        Path("data/gallery"), "Folder of the embedded Qdrant gallery", flag="--gallery"
    )
    qdrant_host: str | None = setting(
        None, "Qdrant server host or URL; empty = embedded gallery", metavar="HOST"
    )
    qdrant_port: int = setting(6333, "Qdrant server port", lo=1, hi=65535)
    qdrant_api_key: str | None = setting(None, "Qdrant server API key", secret=True, metavar="KEY")
    qdrant_https: bool = setting(False, "Use https for the Qdrant server")
    qdrant_collection: str = setting("faces", "Qdrant collection name", flag="--collection", metavar="NAME")
    fps_target: float = setting(
        0.0,
        "Playback FPS for files (0 = the file's own FPS); caps the FPS of live sources",
        lo=0.0,
        hi=1000.0,
    )
    max_speed: bool = setting(False, "Read files as fast as the pipeline goes")
    gui: bool = setting(True, "Show the OpenCV window", flag_help="No window (headless)")
    output: Path | None = setting(None, "Write the annotated video to this .mp4")
    events: Path | None = setting(None, "Write recognition events (JSON lines) here")
    tracks_out: Path | None = setting(None, "Write per-frame faces here: .jsonl, or .csv for MOTChallenge")
    threads: int = setting(0, "Threads per ONNX Runtime session; 0 = automatic", lo=0, hi=256)
    log_level: str = setting("WARNING", "Log level", choices=LOG_LEVELS)
    slow_call_ms: int = setting(
        0,
        "Log where a stage is (its stack, one line) when one of its calls runs longer than this many ms; "
        "0 = off",
        lo=0,
        hi=600000,
    )
    ring_slots: int = setting(8, "Frame slots in the shared-memory ring (frames in flight)", lo=3, hi=256)
    track_high_thresh: float = setting(
        0.6, "Tracker: detections above this start/extend tracks", lo=0.0, hi=1.0
    )
    track_buffer: int = setting(30, "Tracker: frames (at 30 FPS) a lost track is kept", lo=1, hi=9000)
    track_match_thresh: float = setting(
        0.8, "Tracker: IoU-distance gate of the first association", lo=0.0, hi=1.0
    )
    # Cameras: several streams in one run
    cameras_file: Path | None = setting(
        None,
        "Cameras file (TOML, one [[camera]] table per stream; see cameras.example.toml); "
        "empty = VIDEO_SOURCE alone",
        flag="--cameras",
    )
    min_face: int = setting(
        0, "Smallest face to keep: short side of its box in pixels; 0 = no minimum", lo=0, hi=4096
    )
    # MQTT, Home Assistant discovery, Prometheus metrics and face snapshots (all off unless configured)
    mqtt_host: str | None = setting(None, "MQTT broker host; empty = no MQTT (events, states, availability)")
    mqtt_port: int = setting(1883, "MQTT broker port (8883 is usual for TLS)", lo=1, hi=65535)
    mqtt_user: str | None = setting(None, "MQTT user name")
    mqtt_password: str | None = setting(None, "MQTT password", secret=True)
    mqtt_tls: bool = setting(False, "Connect to the MQTT broker over TLS")
    mqtt_topic_prefix: str = setting("facepipe", "First level of every MQTT topic")
    mqtt_client_id: str = setting("facepipe", "MQTT client id; also the Home Assistant device id")
    mqtt_buffer: int = setting(
        10000, "MQTT messages kept while the broker is away (then the oldest are dropped)", lo=10, hi=1000000
    )
    ha_discovery: bool = setting(True, "Publish Home Assistant MQTT discovery configs")
    ha_discovery_prefix: str = setting("homeassistant", "Home Assistant discovery topic prefix")
    camera_idle_s: float = setting(
        60.0, "Seconds without a recognised face before a camera's last face is cleared", lo=1.0, hi=86400.0
    )
    metrics_port: int | None = setting(
        None, "Serve Prometheus metrics on this port (/metrics); empty = off", lo=1, hi=65535
    )
    snapshots_dir: Path | None = setting(
        None, "Write a JPEG face crop of every recognition event here; empty = off"
    )
    snapshot_full_frame: bool = setting(False, "Also write the whole frame, boxes drawn, with every snapshot")
    snapshot_retain_days: float = setting(
        7.0, "Delete snapshots older than this many days", lo=0.01, hi=3650.0
    )
    snapshot_retain_count: int = setting(
        10000, "Keep at most this many snapshots (oldest deleted first)", lo=1, hi=10000000
    )
    # Unknown faces: keeping, grouping and privacy
    keep_unknown: bool = setting(True, "Keep the best faces of unknown tracks for review (enroll unknowns)")
    unknown_retain_days: float = setting(
        30.0, "Days an unknown face is kept before it is dropped", lo=0.01, hi=3650.0
    )
    unknown_max_faces: int = setting(
        10000, "Most unknown faces kept; the oldest go first", lo=10, hi=1_000_000
    )
    unknown_min_quality: float = setting(
        0.3, "Face quality (0..1) needed to keep an unknown face", lo=0.0, hi=1.0
    )
    unknown_faces_per_track: int = setting(5, "Best faces kept per unknown track", lo=1, hi=50)
    blur_unknown: bool = setting(False, "Blur faces that are not known in the window and the output video")
    # Multi-camera processes
    detect_workers: int = setting(
        0,
        "Detector processes the cameras are spread over (each batches its cameras' frames); 0 = one per 8 "
        "cameras where the detector runs on an NVIDIA GPU, else one",
        lo=0,
        hi=8,
    )
    tracking_workers: int = setting(
        0,
        "Tracking processes the cameras are spread over; 0 = one per 4 cameras, at most a quarter of "
        "the CPUs",
        lo=0,
        hi=64,
    )
    # Multi-camera speed and latency
    live_files: bool = setting(
        False, "Treat paced files as live cameras (newest frame wins, tracking never waits): latency tests"
    )
    result_lag: int = setting(
        1, "Files: frames between an embedding request and the frame its answer is applied on", lo=1, hi=16
    )
    embed_gather_ms: float = setting(
        0.0,
        "How long the embedding worker waits after a request for more to batch with it (up to 64 faces); "
        "0 = take only what is queued. A few ms batches a busy GPU's faces better for throughput (files)",
        lo=0.0,
        hi=50.0,
    )
    name_lookahead: int = setting(
        8,
        "Files: frames each output is held so a name decided within them also labels the track's earlier "
        "frames (0: off; live cameras never wait)",
        lo=0,
        hi=64,
    )
    decoder: str = setting(
        "auto",
        "Video decoder for files and stream URLs: auto (NVDEC where PyNvVideoCodec and a GPU are there, "
        "else FFmpeg), ffmpeg, or nvdec",
        choices=("auto", "ffmpeg", "nvdec"),
    )
    frame_format: str = setting(
        "auto",
        "How NVDEC-decoded frames are kept in the shared ring: auto (NV12, converted on the GPU by the "
        "detector, with the torch backend; else BGR), bgr, or nv12",
        choices=("auto", "bgr", "nv12"),
    )
    nvdec_memory: str = setting(
        "host",
        "Where NVDEC decodes to before a frame is copied into the ring: host (the decoder's own copy down, "
        "then ours into the slot) or device (GPU buffers, one copy down, into the slot; needs torch, CUDA)",
        choices=("host", "device"),
    )
    decode_threads: int = setting(
        0,
        "FFmpeg decoding threads per camera; 0 = automatic: FFmpeg's own choice (one per core) for one "
        "camera, the CPUs shared out among several (one each for as many cameras as cores: less CPU a frame)",
        lo=0,
        hi=64,
    )
    torch_compile: bool = setting(
        False,
        "Compile the torch detector's graphs with torch.compile (inductor) at start, one per batch size: "
        "fused kernels, about twice the GPU detector's throughput, for a minute or two more at start (less "
        "with inductor's cache, kept between runs); needs triton and a C compiler",
    )
    torch_compile_batches: str = setting(
        "sparse",
        "Batch sizes TORCH_COMPILE compiles: sparse (1, 4, 16, 32: a batch of 5-15 runs padded to 16) or "
        "every (each power of two: small batches, as live cameras give, run unpadded; twice the compiles)",
        choices=("sparse", "every"),
    )
    gpu_wait: str = setting(
        "block",
        "How the detector's and embedder's threads wait for the GPU (torch backend): block sleeps until it "
        "is done, leaving the cores to decoding; spin busy-waits, a core per waiting process",
        choices=("block", "spin"),
    )

    # Output safety
    overwrite: bool = setting(False, "Replace output files that exist already (else the run refuses)")

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


_PARSERS: dict[type, Callable[[str], Any]] = {int: int, float: float, bool: _parse_bool, Path: Path, str: str}


@functools.cache
def _field_types() -> dict[str, tuple[type, bool]]:
    """Field name -> (its type without None, whether None is allowed), from the resolved annotations."""
    resolved: dict[str, tuple[type, bool]] = {}
    for name, hint in typing.get_type_hints(Settings).items():
        args = (
            typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        )
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) != 1 or kinds[0] not in _PARSERS:
            raise TypeError(
                f"setting {name}: type {hint} is not one of int, float, bool, Path, str (or | None)"
            )
        resolved[name] = (kinds[0], len(kinds) != len(args))
    return resolved


def setting_type(name: str) -> type:
    """The type of setting `name` (int, float, bool, Path or str), without its `| None`."""
    return _field_types()[name][0]


def _typed(kind: type, value: Any) -> Any:
    """A value given as a Python object (not text) as `kind`; ValueError when it is not one."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    if kind is str and isinstance(value, str | os.PathLike):
        return os.fspath(value)
    raise ValueError(f"a {type(value).__name__}")


def _convert(f: dataclasses.Field[Any], raw: Any, origin: str, key: str | None = None) -> Any:
    """`raw` as the field's type, validated; messages name the setting as the user wrote it (`key`)."""
    shown = key or env_name(f.name)
    kind, optional = _field_types()[f.name]
    if raw is None:
        if not optional:
            raise ConfigError(f"{origin} {shown} must not be empty")
        return None
    try:
        value = _PARSERS[kind](raw.strip()) if isinstance(raw, str) else _typed(kind, raw)
    except ValueError as exc:
        raise ConfigError(
            f"{origin} {shown}={raw!r} is not a valid {kind.__name__} ({one_line(exc)}); fix it "
            + (
                "on the command line"
                if origin == "option"
                else "in .env, the environment or the command line"
            )
        ) from None
    _validate(f, value, origin, shown)
    return value


def _validate(f: dataclasses.Field[Any], value: Any, origin: str, name: str) -> None:
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


def range_problem(f: dataclasses.Field[Any], value: Any) -> str | None:
    """Why `value` is outside the field's lo/hi bounds ("is out of range: it must be ..."), or None."""
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        return f"is out of range: it must be {bounds}"
    return None


# -- command-line flags: every CLI builds its setting flags here, so a flag means the same in each -------

ENV_FILE = Path(".env")
# Settings every CLI that opens the gallery or runs the models takes as flags, in the order --help lists them.
GALLERY_SETTINGS = ("qdrant_path", "qdrant_collection", "qdrant_host", "qdrant_port", "qdrant_api_key",
                    "qdrant_https")  # fmt: skip
MODEL_SETTINGS = ("detector_model", "embedder_model", "embedder", "backend", "det_size", "det_threshold",
                  "match_threshold", "threads")  # fmt: skip
FLAGS_TITLE = "settings (override the environment and the settings file)"
_METAVARS = {int: "INT", float: "NUMBER", Path: "PATH", str: "TEXT"}


@dataclass(frozen=True)
class SettingFlag:
    """A setting's command-line flag, built from its field: names, help, value name, what it sets."""

    setting: str
    option_strings: tuple[str, ...]
    help: str
    metavar: str | None  # None for a switch, which takes no value
    const: object = None  # the value a switch sets
    repeat: bool = False  # may be given several times; the setting takes the first
    or_file: str | None = None  # a value that is none of the choices is a file for this other setting


@functools.cache
def setting_flag(name: str) -> SettingFlag:
    """The flag of setting `name`: `--` + the name with dashes unless the field names its own (`flag`);
    a switch for a bool setting (`--no-NAME` when it is on by default). Its help is the setting's help (or
    `flag_help`), with the bounds or choices, the environment name and the default."""
    f = _field(name)
    meta = f.metadata
    kind, _ = _field_types()[name]
    dashed = name.replace("_", "-")
    default_flag = f"--no-{dashed}" if kind is bool and f.default is True else f"--{dashed}"
    flags = meta.get("flag", default_flag)
    option_strings = (flags,) if isinstance(flags, str) else tuple(flags)
    text = meta.get("flag_help", meta["help"])
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if kind is bool:
        const = not f.default
        where = f"{env_name(name)}={str(const).lower()}"
        metavar = None
    else:
        const = None
        where = env_name(name) + (f" or {env_name(meta['or_file'])}" if meta.get("or_file") else "")
        if lo is not None:
            where += f", {lo} to {hi}"
        if f.default is not None:
            where += f", default {f.default}"
        metavar = meta.get("metavar") or ("{" + ",".join(choices) + "}" if choices else _METAVARS[kind])
    return SettingFlag(
        setting=name,
        option_strings=option_strings,
        help=f"{text} [{where}]".replace("%", "%%"),  # argparse %-formats help
        metavar=metavar,
        const=const,
        repeat=bool(meta.get("repeat")),
        or_file=meta.get("or_file"),
    )


def add_setting_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the flags of the settings `names` and `--env-file` to `parser`, in one group.

    A flag not given leaves no attribute (SUPPRESS): it overrides nothing, and a CLI that adds the flags to
    a parser and its sub-commands keeps one given before or after the command."""
    group = parser.add_argument_group(FLAGS_TITLE)
    for name in names:
        flag = setting_flag(name)
        common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": flag.help}
        if flag.metavar is None:
            group.add_argument(*flag.option_strings, action="store_const", const=flag.const, **common)
        else:
            action = "append" if flag.repeat else "store"
            group.add_argument(*flag.option_strings, action=action, metavar=flag.metavar, **common)
    group.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"Settings file read before the environment; a missing file is skipped [default {ENV_FILE}]",
    )


def flag_overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, object]:
    """The setting flags given in `args`, as `load_settings` overrides (setting -> text); flags not given
    are left out. A value of an `or_file` flag that is none of its choices goes to that file setting."""
    overrides: dict[str, object] = {}
    files: dict[str, object] = {}  # applied last: `--embedder FILE` wins over `--embedder-model`
    for name in names:
        if not hasattr(args, name):
            continue
        flag = setting_flag(name)
        value = getattr(args, name)
        if flag.repeat:
            value = value[0]
        choices = _field(name).metadata.get("choices", ())
        if flag.or_file and str(value).strip().lower() not in choices:
            files[flag.or_file] = value
        elif flag.or_file:
            overrides[name] = str(value).strip().lower()
        else:
            overrides[name] = value
    return {**overrides, **files}


def env_file_from(args: argparse.Namespace) -> Path:
    """The settings file `--env-file` names, else `.env`."""
    return Path(getattr(args, "env_file", ENV_FILE))


def settings_from_flags(args: argparse.Namespace, names: Iterable[str]) -> Settings:
    """The settings, with the flags of `names` given in `args` and the settings file `--env-file` names."""
    return load_settings(flag_overrides(args, names), env_file=env_file_from(args))


def _field(name: str) -> dataclasses.Field[Any]:
    return Settings.__dataclass_fields__[name]


def load_settings(
    overrides: Mapping[str, object] | None = None, env_file: Path | None = ENV_FILE
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
    for name, given in (overrides or {}).items():
        if given is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        # Overrides are the CLI's flags: name the flag the user typed, not the environment variable.
        values[name] = _convert(fields[name], given, "option", setting_flag(name).option_strings[0])
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
