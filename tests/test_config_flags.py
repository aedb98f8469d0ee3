"""Setting flags are made in one place (`app.config.setting_flag`): a flag both CLIs take is the same flag,
and every setting is parsed as the type its field declares."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from app import enroll, main
from app.config import (
    ConfigError,
    Settings,
    env_file_from,
    env_name,
    flag_overrides,
    legacy_env_name,
    load_settings,
    setting_flag,
    setting_type,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(env_name(f.name), raising=False)
        monkeypatch.delenv(legacy_env_name(f.name), raising=False)


def _properties(action: argparse.Action) -> tuple[object, ...]:
    return (type(action), action.option_strings, action.dest, action.metavar, action.help, action.type,
            action.choices, action.nargs, action.const, action.default, action.required)  # fmt: skip


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option string -> action, for the options of `parser` (not its sub-commands')."""
    return {option: action for action in parser._actions for option in action.option_strings}  # noqa: SLF001


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return found


def test_every_flag_both_clis_take_has_identical_argparse_properties():
    main_flags, enroll_flags = _flags(main.build_parser()), _flags(enroll.build_parser())
    shared = (main_flags.keys() & enroll_flags.keys()) - {"-h", "--help"}
    assert {
        "--embedder",
        "--embedder-model",
        "--env-file",
        "--gallery",
        "--threshold",
        "--detector",
    } <= shared
    for option in sorted(shared):
        assert _properties(main_flags[option]) == _properties(enroll_flags[option]), option


def test_every_enroll_command_takes_the_setting_flags_as_the_cli_does():
    parser = enroll.build_parser()
    top = _flags(parser)
    for command, sub in _subcommands(parser).items():
        flags = _flags(sub)
        if "--gallery" not in flags:  # a group of actions (`unknowns`): its actions carry the flags
            continue
        for name in enroll.SETTINGS:
            option = setting_flag(name).option_strings[0]
            assert _properties(flags[option]) == _properties(top[option]), (command, option)
        assert _properties(flags["--env-file"]) == _properties(top["--env-file"]), command


@pytest.mark.parametrize("cli", [main, enroll])
def test_each_cli_flag_is_its_settings_flag(cli):
    flags = _flags(cli.build_parser())
    for name in cli.SETTINGS:
        made = setting_flag(name)
        action = flags[made.option_strings[0]]
        assert tuple(action.option_strings) == made.option_strings and action.dest == name
        assert action.help == made.help and action.metavar == made.metavar
        assert env_name(name) in made.help


def test_a_numeric_flag_names_its_bounds_and_a_switch_the_value_it_sets():
    assert "FACEPIPE_DET_SIZE, 32 to 4096, default 640" in setting_flag("det_size").help
    gui = setting_flag("gui")
    assert gui.option_strings == ("--no-gui",) and gui.const is False and "FACEPIPE_GUI=false" in gui.help
    assert setting_flag("log_level").metavar == "{DEBUG,INFO,WARNING,ERROR}"


@pytest.mark.parametrize(
    ("argv", "embedder", "model"),
    [
        (["--embedder", "ArcFace"], "arcface", Path("checkpoints/dlib_resnet.onnx")),
        (["--embedder", "models/r100.onnx"], "auto", Path("models/r100.onnx")),
        (["--embedder-model", "a.onnx", "--embedder", "b.onnx"], "auto", Path("b.onnx")),
        (["--embedder", "dlib", "--embedder-model", "a.onnx"], "dlib", Path("a.onnx")),
    ],
)
def test_embedder_takes_a_kind_or_a_file_in_both_clis(argv, embedder, model):
    from_main = load_settings(main.overrides_from(main.build_parser().parse_args(argv)), env_file=None)
    enroll_args = enroll.build_parser().parse_args([*argv, "list"])
    from_enroll = load_settings(flag_overrides(enroll_args, enroll.SETTINGS), env_file=None)
    for settings in (from_main, from_enroll):
        assert (settings.embedder, settings.embedder_model) == (embedder, model)


def test_env_file_is_read_by_both_clis_before_or_after_the_command(tmp_path):
    env_file = tmp_path / "site.env"
    env_file.write_text("FACEPIPE_DET_SIZE=320\nFACEPIPE_QDRANT_COLLECTION=people\n")
    args = main.build_parser().parse_args(["--env-file", str(env_file), "--collection", "staff"])
    settings = load_settings(main.overrides_from(args), env_file=env_file_from(args))
    assert (settings.det_size, settings.qdrant_collection) == (320, "staff")  # the flag wins
    for argv in (["--env-file", str(env_file), "list"], ["list", "--env-file", str(env_file)]):
        settings = enroll.settings_from(enroll.build_parser().parse_args(argv))
        assert (settings.det_size, settings.qdrant_collection) == (320, "people")
    assert env_file_from(enroll.build_parser().parse_args(["list"])) == Path(".env")


def test_flags_not_given_override_nothing():
    assert flag_overrides(enroll.build_parser().parse_args(["list"]), enroll.SETTINGS) == {}
    assert main.overrides_from(main.build_parser().parse_args([])) == {}


def test_setting_types_are_the_resolved_annotations():
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        kind = setting_type(f.name)
        assert isinstance(kind, type) and kind in (int, float, bool, Path, str), f.name
        assert hints[f.name] in (kind, kind | None), f.name
    assert setting_type("match_threshold") is float and setting_type("qdrant_path") is Path


def _is_exactly(value: object, kind: type) -> bool:
    """`value` is a `kind` (a Path of this platform's flavour), and not a bool standing in for a number."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _valid_text(f: dataclasses.Field) -> str:
    """A value within the field's bounds and choices, written as in `.env`."""
    kind = setting_type(f.name)
    if kind is bool:
        return "yes"
    if "choices" in f.metadata:
        return f.metadata["choices"][-1].lower()
    if kind in (int, float):
        return str(f.metadata["hi"])
    return "some/value"


def test_a_setting_of_type_x_is_parsed_as_x_from_the_env_file_and_the_environment(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    fields = [f for f in dataclasses.fields(Settings) if f.name != "video_source"]
    env_file.write_text("".join(f"{env_name(f.name)}={_valid_text(f)}\n" for f in fields[::2]))
    for f in fields[1::2]:
        monkeypatch.setenv(env_name(f.name), _valid_text(f))
    settings = load_settings(env_file=env_file)
    for f in fields:
        assert _is_exactly(getattr(settings, f.name), setting_type(f.name)), f.name


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("det_threshold", 1, 1.0),  # an int where a float is declared becomes a float
        ("det_size", 320, 320),
        ("qdrant_path", "g", Path("g")),
        ("video_source", Path("clip.mp4"), "clip.mp4"),
        ("gui", False, False),
    ],
)
def test_a_value_given_as_an_object_is_made_the_declared_type(name, given, expected):
    value = getattr(load_settings({name: given}, env_file=None), name)
    assert value == expected and _is_exactly(value, setting_type(name))


@pytest.mark.parametrize(
    ("name", "given"), [("det_size", 3.5), ("gui", 1), ("det_threshold", "0.5x"), ("qdrant_port", [1])]
)
def test_a_value_of_another_type_is_one_line_naming_the_setting(name, given):
    with pytest.raises(ConfigError) as info:
        load_settings({name: given}, env_file=None)
    message = str(info.value)
    flag = setting_flag(name).option_strings[0]
    assert f"option {flag}=" in message and f"is not a valid {setting_type(name).__name__}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "named"), [(["--det-size", "abc"], "--det-size='abc'"), (["--threshold", "7"], "--threshold=7")]
)
def test_a_bad_flag_value_is_named_as_the_flag_in_both_clis(argv, named):
    for parse in (
        lambda: main.overrides_from(main.build_parser().parse_args(argv)),
        lambda: flag_overrides(enroll.build_parser().parse_args([*argv, "list"]), enroll.SETTINGS),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(parse(), env_file=None)
        assert named in str(info.value) and "FACEPIPE_" not in str(info.value)
