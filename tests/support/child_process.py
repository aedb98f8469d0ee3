"""A Python child process for crash tests: started with the repository importable, killed and reaped on the
way out whatever the test did, so no child outlives its test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.shared_data import REPO


@contextmanager
def python_child(script: str, *args: str) -> Iterator[subprocess.Popen]:
    """`python -c script args...`; on exit a child still running is killed, and every child is reaped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script, *args], env=env)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def kill_hard(child: subprocess.Popen) -> None:
    """kill -9 the child and reap it: the crash the tests make."""
    child.send_signal(signal.SIGKILL)
    child.wait(10)
