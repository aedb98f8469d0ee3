"""Cameras as configuration: the cameras file, repeatable --source NAME=URL, and which one wins."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.cameras import (
    CAMERA_KEYS,
    CameraConfig,
    camera_settings,
    effective_det_threshold,
    effective_fps_target,
    effective_min_face,
    load_cameras_file,
    parse_source_flags,
    resolve_cameras,
    split_source_flag,
)
from app.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path so a file's messages say plain "cameras.toml", as a user who runs from its folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str, name: str = "cameras.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return Path(name) if folder == Path.cwd() else path


def error_of(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_example_file_loads_three_cameras_with_the_webcam_disabled():
    cameras = load_cameras_file(REPO / "cameras.example.toml")
    assert [c.name for c in cameras] == ["demo", "door", "desk"]
    demo, door, desk = cameras
    assert demo == CameraConfig("demo", "data/demo/demo.mp4")
    assert door.source.startswith("rtsp://") and "@" in door.source
    assert (door.fps_target, door.det_threshold, door.min_face, door.enabled) == (15.0, 0.7, 40, True)
    assert isinstance(door.fps_target, float) and isinstance(door.min_face, int)
    assert desk.source == "0" and desk.enabled is False
    settings = Settings(cameras_file=REPO / "cameras.example.toml")
    assert [c.name for c in resolve_cameras(settings)] == ["demo", "door"]


def test_overrides_fall_back_to_the_global_settings():
    settings = Settings(fps_target=25.0, det_threshold=0.5, min_face=12)
    plain = CameraConfig("a", "a.mp4")
    tuned = CameraConfig("b", "b.mp4", fps_target=0.0, det_threshold=0.9, min_face=0)
    assert (effective_fps_target(plain, settings), effective_det_threshold(plain, settings)) == (25.0, 0.5)
    assert effective_min_face(plain, settings) == 12
    assert (effective_fps_target(tuned, settings), effective_det_threshold(tuned, settings)) == (0.0, 0.9)
    assert effective_min_face(tuned, settings) == 0  # 0 is a value, not "unset"
    per_camera = camera_settings(tuned, settings)
    assert per_camera.video_source == "b.mp4" and per_camera.det_threshold == 0.9
    assert (
        per_camera.fps_target == 0.0 and per_camera.min_face == 0 and per_camera.backend == settings.backend
    )


def test_camera_repr_masks_the_password():
    camera = CameraConfig("door", "rtsp://admin:s3cret@10.0.0.5/stream1", det_threshold=0.7)
    assert "s3cret" not in repr(camera) and "rtsp://***@10.0.0.5/stream1" in repr(camera)
    assert "det_threshold=0.7" in repr(camera)


FIRST = "cameras.toml: [[camera]] #1: "
DOOR = "cameras.toml: [[camera]] #1 ('door'): "
TABLE_ERRORS = [
    (
        '[[camera]]\nname = "a"\nsource = "a.mp4"\n[[camera]]\nname = "door"\nsource = "b.mp4"\nfps = 5\n',
        "cameras.toml: [[camera]] #2 ('door'): unknown key 'fps' (valid keys: name, source, fps_target, "
        "det_threshold, min_face, enabled)",
    ),
    (
        '[[camera]]\nsource = "a.mp4"\n',
        FIRST + "missing key 'name' (a unique name such as \"door\")",
    ),
    (
        '[[camera]]\nname = "door"\n',
        DOOR + "missing key 'source' (a video file, stream URL or webcam index)",
    ),
    (
        '[[camera]]\nname = "front door"\nsource = "a.mp4"\n',
        'cameras.toml: [[camera]] #1: name = "front door" is not a valid camera name; '
        "use 1-32 letters, digits, '_' or '-'",
    ),
    (
        '[[camera]]\nname = 7\nsource = "a.mp4"\n',
        FIRST + "name = 7 is not a valid camera name; use 1-32 letters, digits, '_' or '-'",
    ),
    (
        f'[[camera]]\nname = "{"x" * 33}"\nsource = "a.mp4"\n',
        f'cameras.toml: [[camera]] #1: name = "{"x" * 33}" is not a valid camera name; '
        "use 1-32 letters, digits, '_' or '-'",
    ),
    (
        '[[camera]]\nname = "door"\nsource = ""\n',
        DOOR + "source must not be empty",
    ),
    (
        '[[camera]]\nname = "door"\nsource = ["a.mp4"]\n',
        DOOR + "source = ['a.mp4'] must be text (a file or URL) or a webcam index",
    ),
    (
        '[[camera]]\nname = "door"\nsource = -1\n',
        DOOR + "source = -1 must be text (a file or URL) or a webcam index",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\nenabled = "no"\n',
        DOOR + 'enabled = "no" must be true or false',
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\ndet_threshold = "high"\n',
        DOOR + 'det_threshold = "high" must be a number',
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\ndet_threshold = 1.5\n',
        DOOR + "det_threshold = 1.5 is out of range: it must be between 0.0 and 1.0",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\nfps_target = -2\n',
        DOOR + "fps_target = -2 is out of range: it must be between 0.0 and 1000.0",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\nfps_target = true\n',
        DOOR + "fps_target = true must be a number",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\nmin_face = 20.5\n',
        DOOR + "min_face = 20.5 must be a whole number",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\nmin_face = 5000\n',
        DOOR + "min_face = 5000 is out of range: it must be between 0 and 4096",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\n[[camera]]\nname = "Door"\nsource = "b.mp4"\n',
        "cameras.toml: [[camera]] #2 ('Door'): name 'Door' is already used by [[camera]] #1; names must be "
        "unique (case does not count: they name files)",
    ),
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4"\n[camera.extra]\nx = 1\n',
        DOOR + "unknown key 'extra' (valid keys: name, source, fps_target, det_threshold, min_face, enabled)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), TABLE_ERRORS)
def test_a_bad_camera_table_is_one_line_naming_file_table_and_key(in_tmp, text, expected):
    assert error_of(load_cameras_file, write(in_tmp, text)) == expected


FILE_ERRORS = [
    (
        '[[camera]]\nname = "door"\nsource = "a.mp4\n',
        "cameras.toml: invalid TOML: Illegal character '\\n' (at line 3, column 16)",
    ),
    (
        '[[camera]]\nname "door"\n',
        "cameras.toml: invalid TOML: Expected '=' after a key in a key/value pair (at line 2, column 6)",
    ),
    ("", "cameras.toml: no [[camera]] table; add one per camera (see cameras.example.toml)"),
    ("# nothing yet\n", "cameras.toml: no [[camera]] table; add one per camera (see cameras.example.toml)"),
    (
        '[camera]\nname = "door"\nsource = "a.mp4"\n',
        "cameras.toml: 'camera' must be [[camera]] tables, one per camera",
    ),
    (
        '[[cameras]]\nname = "door"\nsource = "a.mp4"\n',
        "cameras.toml: unknown key or table 'cameras' (the file holds only [[camera]] tables)",
    ),
    (
        'fps_target = 5\n[[camera]]\nname = "door"\nsource = "a.mp4"\n',
        "cameras.toml: unknown key or table 'fps_target' (the file holds only [[camera]] tables)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), FILE_ERRORS)
def test_a_bad_cameras_file_is_one_line(in_tmp, text, expected):
    assert error_of(load_cameras_file, write(in_tmp, text)) == expected


def test_a_missing_or_unreadable_cameras_file_is_one_line(in_tmp):
    assert error_of(load_cameras_file, Path("nowhere.toml")) == (
        "cameras file nowhere.toml does not exist; check --cameras (or CAMERAS_FILE)"
    )
    (in_tmp / "folder").mkdir()
    assert error_of(load_cameras_file, Path("folder")) == (
        "cameras file folder is not a file; pass a .toml file to --cameras"
    )
    (in_tmp / "latin1.toml").write_bytes(b'[[camera]]\nname = "caf\xe9"\n')
    assert error_of(load_cameras_file, Path("latin1.toml")) == (
        "latin1.toml: not UTF-8 text (at line 2); save it as UTF-8"
    )


def test_error_messages_mask_camera_passwords(in_tmp):
    path = write(in_tmp, '[[camera]]\nname = "door"\nsource = "rtsp://admin:s3cret@cam/1"\nenabled = 1\n')
    assert (
        error_of(load_cameras_file, path)
        == "cameras.toml: [[camera]] #1 ('door'): enabled = 1 must be true or false"
    )
    path = write(in_tmp, '[[camera]]\nname = "rtsp://admin:s3cret@cam/1"\nsource = "x"\n')
    assert error_of(load_cameras_file, path) == (
        'cameras.toml: [[camera]] #1: name = "rtsp://***@cam/1" is not a valid camera name; '
        "use 1-32 letters, digits, '_' or '-'"
    )


def test_a_webcam_index_may_be_a_toml_integer(in_tmp):
    path = write(in_tmp, '[[camera]]\nname = "desk"\nsource = 1\n')
    assert load_cameras_file(path) == [CameraConfig("desk", "1")]


def test_every_key_is_documented_in_the_example_file():
    text = (REPO / "cameras.example.toml").read_text()
    for key in CAMERA_KEYS:
        assert f"#   {key} " in text, key


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("door=rtsp://cam/1", ("door", "rtsp://cam/1")),
        ("rtsp://host/x?ch=1", (None, "rtsp://host/x?ch=1")),
        ("http://u:p@host/v?user=a&pass=b", (None, "http://u:p@host/v?user=a&pass=b")),
        ("yard=http://host/v?ch=2", ("yard", "http://host/v?ch=2")),
        ("front door=x.mp4", (None, "front door=x.mp4")),
        ("./a=b.mp4", (None, "./a=b.mp4")),
        ("clip.mp4", (None, "clip.mp4")),
        ("0", (None, "0")),
        ("desk=0", ("desk", "0")),
    ],
)
def test_name_before_the_first_equals_sign_only_when_it_is_a_camera_name(flag, expected):
    assert split_source_flag(flag) == expected


def test_one_plain_source_is_the_default_camera_and_named_ones_keep_their_names():
    assert parse_source_flags(["clip.mp4"]) == [CameraConfig("default", "clip.mp4")]
    assert parse_source_flags(["door=rtsp://cam/1"]) == [CameraConfig("door", "rtsp://cam/1")]
    cameras = parse_source_flags(["door=rtsp://cam/1?ch=1", "yard=0", "lobby=a.mp4"])
    assert [(c.name, c.source) for c in cameras] == [
        ("door", "rtsp://cam/1?ch=1"),
        ("yard", "0"),
        ("lobby", "a.mp4"),
    ]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["a.mp4", "b.mp4"],
            "--source is given 2 times and 2 without a name; name each camera: --source NAME=URL "
            "(e.g. --source door=rtsp://... --source yard=0)",
        ),
        (
            ["door=a.mp4", "rtsp://cam/1?ch=2"],
            "--source is given 2 times and 1 without a name; name each camera: --source NAME=URL "
            "(e.g. --source door=rtsp://... --source yard=0)",
        ),
        (
            ["door=a.mp4", "DOOR=b.mp4"],
            "--source: camera name 'DOOR' is given twice; names must be unique (case does not count)",
        ),
        (["door="], "--source door= has no source after '='; use --source door=URL"),
    ],
)
def test_bad_source_flags_are_one_line(flags, expected):
    assert error_of(parse_source_flags, flags) == expected


def test_flags_win_over_the_cameras_file_which_wins_over_video_source(in_tmp):
    path = write(in_tmp, '[[camera]]\nname = "door"\nsource = "file.mp4"\n')
    both = Settings(video_source="env.mp4", cameras_file=path)
    assert resolve_cameras(both, ["flag.mp4"]) == [CameraConfig("default", "flag.mp4")]
    assert resolve_cameras(both, []) == [CameraConfig("door", "file.mp4")]
    assert resolve_cameras(both) == [CameraConfig("door", "file.mp4")]
    assert resolve_cameras(Settings(video_source="env.mp4")) == [CameraConfig("default", "env.mp4")]


def test_cameras_file_comes_from_the_environment_or_the_cli(in_tmp, monkeypatch):
    write(in_tmp, '[[camera]]\nname = "door"\nsource = "file.mp4"\n')
    monkeypatch.setenv("FACEPIPE_CAMERAS_FILE", "cameras.toml")
    settings = load_settings(env_file=None)
    assert settings.cameras_file == Path("cameras.toml")
    assert [c.name for c in resolve_cameras(settings)] == ["door"]
    assert load_settings({"cameras_file": "other.toml"}, env_file=None).cameras_file == Path("other.toml")


def test_all_cameras_disabled_is_an_error(in_tmp):
    path = write(in_tmp, '[[camera]]\nname = "door"\nsource = "a.mp4"\nenabled = false\n')
    assert error_of(resolve_cameras, Settings(cameras_file=path)) == (
        "cameras.toml: every camera is disabled (enabled = false); enable at least one"
    )


def test_min_face_setting_is_bounded(monkeypatch):
    assert load_settings(env_file=None).min_face == 0
    monkeypatch.setenv("FACEPIPE_MIN_FACE", "-1")
    with pytest.raises(ConfigError, match=r"MIN_FACE=-1 is out of range: it must be between 0 and 4096"):
        load_settings(env_file=None)
