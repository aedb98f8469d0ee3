"""Fuzzed settings and enroll command lines: every outcome is success (0) or one `error:` line (2), never a
traceback, and a failed command leaves the gallery as it was."""

from __future__ import annotations

import dataclasses
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import ConfigError, Settings, env_name, legacy_env_name, load_settings
from app.gallery import open_gallery
from tests.test_enroll import MODELS, TRAIN

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(Settings)]

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
# A NUL cannot reach a program through argv at all (the OS refuses it), so command-line texts leave it out.
argv_texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
)
values = st.one_of(
    texts,
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "true", "no", "1e309", "-0", "0x10", "data/gallery", "rtsp://u:p@h/1", "  7 "]),
)
keys = st.one_of(
    st.sampled_from(FIELDS).map(env_name),
    st.sampled_from(FIELDS).map(legacy_env_name),
    st.sampled_from(FIELDS).map(lambda name: env_name(name) + "X"),
    st.text(alphabet=string.ascii_uppercase + "_", min_size=1, max_size=16),
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in FIELDS:
        monkeypatch.delenv(env_name(name), raising=False)
        monkeypatch.delenv(legacy_env_name(name), raising=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(keys, values), max_size=4), overrides=st.dictionaries(
    st.sampled_from(FIELDS), values, max_size=3))  # fmt: skip
def test_fuzzed_settings_load_or_fail_in_one_line(tmp_path, entries, overrides):
    env_file = tmp_path / "fuzz.env"
    lines = [
        f"{key}={value!r}" if "\n" in value or "#" in value else f"{key}={value}" for key, value in entries
    ]
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        loaded = load_settings(overrides, env_file=env_file)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        return
    for f in dataclasses.fields(Settings):  # whatever loaded is within its declared bounds
        value, lo, hi = getattr(loaded, f.name), f.metadata.get("lo"), f.metadata.get("hi")
        if value is not None and lo is not None:
            assert lo <= value <= hi, f.name


def gallery_state(folder: Path) -> tuple[str, dict[str, list[tuple[float, ...]]]]:
    """What the gallery holds: its record (embedder, current shard, checksums) and every person's vectors.
    Not the shard's bytes: Qdrant tidies its own files (journals, config) whenever a shard is opened."""
    record = (folder / "faces" / "gallery.json").read_text()
    gallery = open_gallery(Settings(qdrant_path=folder), None)
    try:
        return record, {name: sorted(map(tuple, gallery.vectors(name))) for name in gallery.list()}
    finally:
        gallery.close()


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "app.enroll", "--gallery", str(work / "g"), *MODELS, "add", "obama",
         str(TRAIN / "obama" / "obama.jpg")],
        cwd=work, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return work


names = st.one_of(st.sampled_from(["obama", "nobody", " obama", "a\nb", "\x1b[2J", "x" * 300]), argv_texts)
option_values = st.one_of(
    values.filter(lambda v: "\x00" not in v), st.sampled_from(["100000", "-1", "nan", "faces", "../x", "a/b"])
)
options = st.lists(
    st.tuples(
        st.sampled_from(
            ["--det-size", "--det-threshold", "--threshold", "--threads", "--collection", "--qdrant-port",
             "--embedder", "--backend", "--log-level"]
        ),
        option_values,
    ),
    max_size=2,
)  # fmt: skip
commands = st.one_of(
    st.tuples(st.just("list")),
    st.tuples(st.just("verify")),
    st.tuples(st.just("remove"), names),
    st.tuples(st.just("add"), names, st.sampled_from(["missing.jpg", str(REPO / "README.md")])),
    st.tuples(st.just("backup"), st.sampled_from(["g", "bk", "g/faces"])),
    st.tuples(st.just("restore"), st.sampled_from(["g", "missing", "g/faces"])),
    st.tuples(st.sampled_from(["", "--", "bogus", "-x"])),
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=commands, opts=options)
def test_fuzzed_enroll_commands_succeed_or_fail_in_one_line_leaving_the_gallery(enrolled, command, opts):
    gallery = enrolled / "g"
    before = gallery_state(gallery)
    argv = [part for part in command if part != ""]
    argv += [item for pair in opts for item in pair]
    env = {k: v for k, v in os.environ.items() if k not in {env_name(f) for f in FIELDS}}
    result = subprocess.run(
        [sys.executable, "-m", "app.enroll", "--gallery", str(gallery), *MODELS, *argv],
        cwd=enrolled, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 2), (argv, result.stderr)
    assert "Traceback" not in result.stderr, (argv, result.stderr)
    if result.returncode == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) <= 1 and lines[0].startswith("error: "), (argv, result.stderr)
        assert gallery_state(gallery) == before, argv
    for made in ("bk",):  # a successful backup is removed so that the next example can make it again
        target = enrolled / made
        if target.exists():
            import shutil

            shutil.rmtree(target)
