"""`stage_process_main` in a real process of its own: how a stage process ends on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.waiting import GUARD_S

REPO = Path(__file__).resolve().parents[2]

# A stage whose setup() is inside native code that calls back into Python (as a C extension initialising on
# import does), and stays there until the process is told to stop.
LOADING_STAGE = """
import ctypes, multiprocessing, threading, time
from app.pipeline.stage_runner import StageChannels, stage_process_main

class Loading:
    name = "detect"

    def setup(self):
        compare_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

        def compare(a, b):
            print("loading", flush=True)
            while True:
                time.sleep(0.01)

        items = (ctypes.c_int * 2)(2, 1)
        ctypes.CDLL(None).qsort(items, 2, ctypes.sizeof(ctypes.c_int), compare_type(compare))
        return {}

    def process(self, msg):
        return []

    def close(self):
        pass

supervisor_end, stage_end = multiprocessing.Pipe()
stage_process_main(Loading(), StageChannels(None, None, stage_end, threading.Event()))
"""


def test_sigterm_during_setup_in_native_code_ends_the_process_at_once_and_quietly():
    # Raising SystemExit inside the callback would be swallowed by ctypes with a trace on stderr (a C++
    # extension aborts instead), and setup would go on: the supervisor's stop must end it silently.
    process = subprocess.Popen(
        [sys.executable, "-c", LOADING_STAGE],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline() == "loading\n"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=GUARD_S)
    finally:
        process.kill()
    assert (process.returncode, stderr) == (128 + signal.SIGTERM, "")


FINALISER_RAISES = """
import sys
from app.pipeline.stage_runner import _end_on_unraisable_stop

sys.unraisablehook = _end_on_unraisable_stop  # as stage_process_main installs it

class Finalised:
    def __del__(self):
        raise {exc}  # the SIGTERM handler's SystemExit landing in a finaliser, or any other error there

Finalised()
print("went on", flush=True)
"""


def run_finaliser(exc: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", FINALISER_RAISES.format(exc=exc)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=GUARD_S,
    )  # fmt: skip


def test_a_stop_raised_in_a_finaliser_ends_the_process_at_once_and_quietly():
    ended = run_finaliser("SystemExit(143)")
    assert (ended.returncode, ended.stdout, ended.stderr) == (143, "", "")


def test_other_errors_in_a_finaliser_are_still_reported_and_the_process_goes_on():
    went_on = run_finaliser("ValueError('odd')")
    assert (went_on.returncode, went_on.stdout) == (0, "went on\n")
    assert "ValueError: odd" in went_on.stderr
