"""The real OpenCV window, on a virtual X display (Xvfb): frames are shown and pressing q ends the run.

Keys are typed with the X test extension (libXtst, through ctypes) as a user would. Needs Xvfb and the
opencv-python wheel (with highgui); without them the CLI refuses --gui with one line, tested in test_main.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.stages.gui import gui_unavailable_reason
from tests.support.shared_data import HAMILTON

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb for a virtual display"),
    pytest.mark.skipif(ctypes.util.find_library("Xtst") is None, reason="needs libXtst to type keys"),
]


@pytest.fixture
def display():
    number = 90 + os.getpid() % 9
    while Path(f"/tmp/.X11-unix/X{number}").exists():
        number += 1
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60  # a failure guard: the X server creates its socket when it is ready
    while not Path(f"/tmp/.X11-unix/X{number}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f":{number}"
    server.send_signal(signal.SIGTERM)
    server.wait(5)


def press_key(display: str, key: str, at: tuple[int, int] = (60, 60)) -> None:
    """Move the pointer over the window (no window manager: focus follows the pointer) and type `key`."""
    x11 = ctypes.CDLL(ctypes.util.find_library("X11"))
    xtst = ctypes.CDLL(ctypes.util.find_library("Xtst"))
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XStringToKeysym.restype = ctypes.c_ulong
    x11.XStringToKeysym.argtypes = [ctypes.c_char_p]
    x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
    xtst.XTestFakeMotionEvent.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_ulong,
    ]
    handle = x11.XOpenDisplay(display.encode())
    assert handle, f"cannot open display {display}"
    try:
        xtst.XTestFakeMotionEvent(handle, 0, at[0], at[1], 0)
        code = x11.XKeysymToKeycode(handle, x11.XStringToKeysym(key.encode()))
        xtst.XTestFakeKeyEvent(handle, code, 1, 0)
        xtst.XTestFakeKeyEvent(handle, code, 0, 0)
        x11.XFlush(handle)
    finally:
        x11.XCloseDisplay(handle)


def test_window_shows_frames_and_q_quits(display, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISPLAY": display, "WAYLAND_DISPLAY": ""}
    os.environ["DISPLAY"] = display
    try:
        # The project installs opencv-python (with highgui): a build without windows is a broken install.
        assert gui_unavailable_reason() is None, gui_unavailable_reason()
    finally:
        del os.environ["DISPLAY"]
    tracks = tmp_path / "tracks.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.main", "--env-file", str(tmp_path / "none.env"),
         "--source", str(HAMILTON), "--gallery", str(tmp_path / "empty"), "--tracks-out", str(tracks)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180  # a guard only: a loaded machine may take long to start
        while time.monotonic() < deadline and (not tracks.exists() or tracks.stat().st_size < 2000):
            time.sleep(0.1)  # frames are being shown (the clip plays at its own 30 FPS: ~9 s in all)
        assert proc.poll() is None, proc.communicate()[1]
        press_key(display, "q")
        out, err = proc.communicate(timeout=60)  # a failure guard: the key, not the clip's end, stops it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert "stopped: quit key pressed (q)" in err
    assert '"stop_reason": "quit key pressed (q)"' in out.splitlines()[-1]
    assert "QFontDatabase" not in err and "Traceback" not in err
