"""Helpers for tests that run a pipeline in a child process and check what is left afterwards (via /proc)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> dict[int, str]:
    """{pid: comm} of the live processes whose parent is `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(pid) and not fields.get("State", "").startswith("Z"):
            found[int(entry.name)] = fields.get("Name", "").strip()
    return found


def alive(pids) -> list[int]:
    """Those of `pids` that still exist and are not zombies."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.append(pid)
    return out


def still_alive(pids, within_s: float = 30.0) -> list[int]:
    """Those of `pids` still alive once they had `within_s` to finish exiting: a process the stopped run
    leaves behind (an orphan) stays, one that is just exiting (the run's resource tracker sees its parent
    go only after the parent has gone) does not. The wait is a bound, not a measurement."""
    deadline = time.monotonic() + within_s
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def shm_segments(owner_pid: int) -> list[str]:
    """Frame-ring segments named after `owner_pid` still in /dev/shm."""
    return sorted(p.name for p in Path("/dev/shm").glob(f"facering-{owner_pid}-*"))


class RunningPipeline:
    """A pipeline command run as a child process, with stderr collected line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path = REPO, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.stdout = ""
        self.stage_pids: dict[int, str] = {}

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def wait_for_stderr(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.stderr_lines):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.1)
                return any(text in line for line in self.stderr_lines)
            time.sleep(0.02)
        return False

    def record_stages(self) -> dict[int, str]:
        self.stage_pids = children_of(self.proc.pid)
        return self.stage_pids

    def stage_pid(self, stage: str) -> int:
        matches = [pid for pid, comm in self.record_stages().items() if comm == f"fp-{stage}"]
        assert len(matches) == 1, f"no single process fp-{stage} among {self.stage_pids}"
        return matches[0]

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit (`timeout` is a failure guard); returns the exit code. How promptly a run
        stops is the supervisor's own bound (its stop grace, then terminate and kill), not timed here."""
        self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()
        self._reader.join(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def summary(self) -> dict:
        """The JSON summary: the last line of stdout."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no stdout; stderr:\n{self.stderr}"
        return json.loads(lines[-1])
