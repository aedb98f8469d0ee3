"""Suite-wide checks before any test runs."""

from __future__ import annotations

import pytest

from tests.support.shared_data import missing_shared_data


def pytest_configure(config: pytest.Config) -> None:
    # Without the shared data dozens of tests would fail one by one, each with its own missing file; one
    # clear line (pytest prints it as `ERROR: ...`, exit status 4) says what is wrong instead.
    problem = missing_shared_data()
    if problem is not None:
        raise pytest.UsageError(problem)
