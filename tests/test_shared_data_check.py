"""The suite stops once, with one line, when the shared test data is missing (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.shared_data import REPO, SHARED_PARTS


def _copy_of_the_suite_setup(root: Path) -> Path:
    """A repository of the real conftest and support package plus one passing test, beside no shared data."""
    repo = root / "repo"
    shutil.copytree(
        REPO / "tests" / "support",
        repo / "tests" / "support",
        ignore=shutil.ignore_patterns("test_*.py", "__pycache__"),  # its own tests need real data
    )
    shutil.copy(REPO / "tests" / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_one.py").write_text("def test_one():\n    pass\n")
    return repo


def _pytest(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(repo), "tests"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_shared_data_stops_the_run_once_naming_the_path(tmp_path: Path) -> None:
    repo = _copy_of_the_suite_setup(tmp_path)
    result = _pytest(repo)
    out = result.stdout + result.stderr
    assert result.returncode == 4, out
    shared = tmp_path / "shared" / "data"
    expected = f"ERROR: the shared test data {shared} lacks faces/, identities/, groups/: "
    assert out.count(expected) == 1, out
    assert out.strip().count("\n") == 0, out  # that one line and nothing else
    assert "passed" not in out and "Traceback" not in out


def test_present_shared_data_lets_the_tests_run(tmp_path: Path) -> None:
    repo = _copy_of_the_suite_setup(tmp_path)
    for part in SHARED_PARTS:
        (tmp_path / "shared" / "data" / part).mkdir(parents=True)
    result = _pytest(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
