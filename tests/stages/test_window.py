"""The mosaic window's behaviour without a display: a fake backend stands in for OpenCV's highgui.

What is shown (mosaic or one camera), keys (q / Esc quit, 1-9 select, 0 back), clicks on tiles, notes,
the repaint limit with several cameras (injected clock) and the one-camera window as before. The last test
opens the real window on a virtual X display (Xvfb) and clicks and types into it as a user would.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_gui_window import display, press_key  # noqa: F401 - the virtual display fixture

from app.stages.gui import WINDOW_TITLE
from app.stages.window import ESC_PRESSED, QUIT_PRESSED, WINDOW_CLOSED, MosaicWindow
from app.vision.drawing import NOTE_BGR
from app.vision.mosaic import tile_rects

RED, BLUE, GREEN = (0, 0, 255), (255, 0, 0), (0, 255, 0)
REPO = Path(__file__).resolve().parents[2]


class FakeBackend:
    """Records every call; keys and clicks are queued by the test, as a user would type and click."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.shown: list[np.ndarray] = []
        self.sizes: list[tuple[int, int]] = []
        self.keys: list[int] = []
        self.open_now = True
        self.closed = False
        self.click: Callable[[int, int], None] | None = None

    def open(self, title: str) -> None:
        self.opened.append(title)

    def resize(self, title: str, width: int, height: int) -> None:
        self.sizes.append((width, height))

    def show(self, title: str, image: np.ndarray) -> None:
        self.shown.append(image.copy())

    def poll_key(self) -> int | None:
        return self.keys.pop(0) if self.keys else None

    def is_open(self, title: str) -> bool:
        return self.open_now

    def on_click(self, title: str, callback: Callable[[int, int], None]) -> None:
        self.click = callback

    def close(self, title: str) -> None:
        self.closed = True


def solid(colour: tuple[int, int, int], w: int = 320, h: int = 180) -> np.ndarray:
    return np.full((h, w, 3), colour, np.uint8)


def near(image: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - np.array(colour)) <= tol, axis=2)


def three_cameras(**kwargs) -> tuple[MosaicWindow, FakeBackend]:
    backend = FakeBackend()
    # refresh_hz=0: every show() paints, so these tests are about what is shown, not when.
    window = MosaicWindow(["door", "yard", "lobby"], backend=backend, refresh_hz=0, **kwargs)
    window.open()
    for index, colour in enumerate((RED, GREEN, BLUE)):
        window.update(index, solid(colour))
    return window, backend


def test_one_camera_is_shown_full_size_as_before_and_q_quits():
    backend = FakeBackend()
    window = MosaicWindow(["default"], backend=backend)
    window.open()
    frame = solid(RED, 1920, 1080)
    assert window.show(frame) is True
    assert backend.opened == [WINDOW_TITLE] and backend.sizes == [(1280, 720)]  # capped to a laptop screen
    shown = backend.shown[-1]
    assert shown.shape == frame.shape
    assert np.array_equal(shown[:900], frame[:900])  # the picture itself, untouched above the legend
    assert not np.array_equal(shown[1000:, 1500:], frame[1000:, 1500:])  # the legend, bottom right
    assert np.array_equal(frame, solid(RED, 1920, 1080))  # drawn on a copy, not on the caller's frame
    backend.keys += [ord("2"), ord("0")]  # camera keys mean nothing with one camera
    assert window.show(frame) and window.show(frame) and window.selected == 0
    backend.keys.append(ord("q"))
    assert window.show(frame) is False and window.last_stop_reason == QUIT_PRESSED
    assert len(backend.shown) == 4 and backend.sizes == [(1280, 720)]  # every frame painted, resized once
    window.close()
    assert backend.closed


@pytest.mark.parametrize("key", [27, ord("Q")])
def test_escape_and_capital_q_quit_too(key):
    window, backend = three_cameras()
    backend.keys.append(key)
    assert window.show() is False and window.last_stop_reason == (ESC_PRESSED if key == 27 else QUIT_PRESSED)


def test_closing_the_window_quits_with_its_own_reason():
    window, backend = three_cameras()
    assert window.show() is True and window.last_stop_reason is None
    backend.open_now = False
    assert window.show() is False and window.last_stop_reason == WINDOW_CLOSED
    assert len(backend.shown) == 1  # nothing painted into a closed window


def test_several_cameras_are_shown_as_a_mosaic_and_a_number_key_shows_one():
    window, backend = three_cameras()
    assert window.show()
    mosaic = backend.shown[-1]
    rects = tile_rects(3, (mosaic.shape[1], mosaic.shape[0]))
    for (x, y, w, h), colour in zip(rects, (RED, GREEN, BLUE), strict=False):
        assert tuple(int(v) for v in mosaic[y + h // 2, x + w // 2]) == colour
    backend.keys.append(ord("2"))
    assert window.show() and window.selected == 1
    assert window.show()
    yard = backend.shown[-1]
    assert yard.shape == (180, 320, 3) and tuple(int(v) for v in yard[20, 300]) == GREEN  # yard alone
    backend.keys.append(ord("2"))  # the same number again: back to the mosaic
    assert window.show() and window.selected is None
    backend.keys += [ord("3"), ord("0")]
    assert window.show() and window.selected == 2
    assert window.show() and window.selected is None
    backend.keys.append(ord("9"))  # no ninth camera: ignored
    assert window.show() and window.selected is None


def test_a_click_on_a_tile_shows_that_camera_and_another_click_returns():
    window, backend = three_cameras()
    assert window.show()
    mosaic = backend.shown[-1]
    x, y, w, h = tile_rects(3, (mosaic.shape[1], mosaic.shape[0]))[2]
    assert backend.click is not None
    backend.click(x + w // 2, y + h // 2)  # what OpenCV calls during waitKey on a left click
    assert window.selected == 2
    assert window.show() and tuple(int(v) for v in backend.shown[-1][20, 300]) == BLUE
    backend.click(5, 5)
    assert window.selected is None
    gap_x = tile_rects(3, (mosaic.shape[1], mosaic.shape[0]))[0][2]
    backend.click(gap_x, 5)  # between tiles: nothing selected
    assert window.selected is None
    backend.click(mosaic.shape[1] - 5, mosaic.shape[0] - 5)  # the empty fourth cell of the 2x2 grid
    assert window.selected is None


def test_a_note_shows_on_its_tile_and_on_the_camera_alone():
    window, backend = three_cameras()
    window.set_note(1, "reconnecting")
    assert window.show()
    mosaic = backend.shown[-1]
    rects = tile_rects(3, (mosaic.shape[1], mosaic.shape[0]))
    amber = near(mosaic, NOTE_BGR)
    x, y, w, h = rects[1]
    assert amber[y : y + h, x : x + w].sum() > 30
    assert amber.sum() == amber[y : y + h, x : x + w].sum()  # only on the yard's tile
    window.select(1)
    assert window.show() and near(backend.shown[-1], NOTE_BGR).sum() > 30
    window.set_note(1, None)
    assert window.show() and near(backend.shown[-1], NOTE_BGR).sum() == 0


def test_a_camera_without_a_picture_yet_says_so():
    backend = FakeBackend()
    window = MosaicWindow(["door", "yard"], backend=backend, refresh_hz=0)
    window.open()
    window.update(0, solid(RED))
    window.select(1)
    assert window.show()
    assert near(backend.shown[-1], NOTE_BGR).sum() > 30  # "waiting for the first picture"
    window.select(None)
    assert window.show() and backend.shown[-1].shape[:2] == (180, 642)  # two 320x180 tiles side by side


def test_several_cameras_repaint_at_most_refresh_hz_times_a_second():
    backend = FakeBackend()
    now = [0.0]
    window = MosaicWindow(["a", "b"], backend=backend, refresh_hz=8.0, clock=lambda: now[0])
    window.open()
    window.update(0, solid(RED))
    for step in range(64):  # 64 frames in 2 s (times exact in binary): 16 repaints at 8 Hz
        now[0] = step / 32
        assert window.show()
    assert len(backend.shown) == 16
    backend.keys.append(ord("q"))
    now[0] = 2.0
    assert window.show() is False  # keys are read on every repaint


def test_a_slow_paint_spaces_the_next_ones_out():
    backend = FakeBackend()
    now = [0.0]

    def slow_show(title: str, image: np.ndarray) -> None:
        now[0] += 0.1  # this paint took 100 ms: the next may come 400 ms later at a 25% share
        backend.shown.append(image)

    backend.show = slow_show
    window = MosaicWindow(["a", "b"], backend=backend, refresh_hz=30.0, clock=lambda: now[0])
    window.open()
    window.update(0, solid(RED))
    assert window.show() and len(backend.shown) == 1
    now[0] = 0.39
    assert window.show() and len(backend.shown) == 1
    now[0] = 0.40
    assert window.show() and len(backend.shown) == 2


def test_bad_camera_index_is_an_error():
    window, _ = three_cameras()
    with pytest.raises(IndexError, match="no camera 3"):
        window.select(3)
    with pytest.raises(ValueError, match="at least one camera"):
        MosaicWindow([], backend=FakeBackend())


# A two-camera window in its own process (Qt stays out of the test process); it prints the window's image
# rectangle once, then what it shows whenever that changes, then why it stopped.
WINDOW_SCRIPT = """
import sys, time
import cv2, numpy as np
from app.stages.window import MosaicWindow
window = MosaicWindow(["door", "yard"])
window.open()
window.update(0, np.full((360, 640, 3), (0, 0, 255), np.uint8))
window.update(1, np.full((360, 640, 3), (0, 255, 0), np.uint8))
shown = None
deadline = time.monotonic() + 600  # a failure guard: the test quits it with q long before
while time.monotonic() < deadline and window.show():
    state = "mosaic" if window.selected is None else f"camera {window.selected}"
    if state != shown:
        if shown is None:
            print("rect", *cv2.getWindowImageRect(window.title), flush=True)
        print(state, flush=True)
        shown = state
    time.sleep(0.01)
print("stopped", window.last_stop_reason, flush=True)
window.close()
"""


def click(display: str, x: int, y: int) -> None:  # noqa: F811 - `display` is the X display name here
    """Move the pointer to screen pixel (x, y) and click the left button, through the X test extension."""
    x11 = ctypes.CDLL(ctypes.util.find_library("X11"))
    xtst = ctypes.CDLL(ctypes.util.find_library("Xtst"))
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xtst.XTestFakeMotionEvent.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_ulong,
    ]
    xtst.XTestFakeButtonEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
    handle = x11.XOpenDisplay(display.encode())
    assert handle, f"cannot open display {display}"
    try:
        xtst.XTestFakeMotionEvent(handle, 0, x, y, 0)
        x11.XFlush(handle)
        time.sleep(0.1)  # let Qt see the pointer arrive before the press
        xtst.XTestFakeButtonEvent(handle, 1, 1, 0)
        xtst.XTestFakeButtonEvent(handle, 1, 0, 0)
        x11.XFlush(handle)
    finally:
        x11.XCloseDisplay(handle)


def line_reader(proc: subprocess.Popen) -> Callable[[], str]:
    """The process's next stdout line, waiting at most 60 s, a failure guard (a thread reads, so no line
    waits in a buffer)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in proc.stdout], daemon=True).start()

    def next_line() -> str:
        try:
            return lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError("the window process printed nothing more") from None

    return next_line


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb for a virtual display")
@pytest.mark.skipif(ctypes.util.find_library("Xtst") is None, reason="needs libXtst to click and type")
def test_real_window_click_selects_a_camera_keys_switch_back_and_q_quits(display):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISPLAY": display, "WAYLAND_DISPLAY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", WINDOW_SCRIPT], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    read_line = line_reader(proc)
    try:
        rect = [int(v) for v in read_line().split()[1:]]
        assert read_line() == "mosaic"
        x, y, w, h = rect
        # The canvas is 1282x360 (two 640x360 tiles and a 2 px gap); the yard is the right-hand tile.
        click(display, x + round(w * 961 / 1282), y + h // 2)
        assert read_line() == "camera 1"
        press_key(display, "0", at=(x + w // 4, y + h // 2))
        assert read_line() == "mosaic"
        press_key(display, "2", at=(x + w // 4, y + h // 2))
        assert read_line() == "camera 1"
        click(display, x + w // 4, y + h // 2)  # a click on the camera alone: back to the mosaic
        assert read_line() == "mosaic"
        press_key(display, "q", at=(x + w // 4, y + h // 2))
        assert read_line() == "stopped quit key pressed (q)"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    err = proc.stderr.read()
    assert "Traceback" not in err and "QFontDatabase" not in err, err
