"""The OpenCV window of one picture, and whether one can be opened here: what the GUI stage and the mosaic
window (`window.py`) both use.

A window needs OpenCV's highgui (the opencv-python wheel, not opencv-python-headless) and a display;
`gui_unavailable_reason()` tells which is missing before anything starts, and the CLI suggests --no-gui.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Protocol

import cv2

from app.errors import UserError, one_line

WINDOW_TITLE = "Face recognition (q / Esc to quit)"
SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts", "/usr/local/share/fonts")
QUIT_KEYS = (ord("q"), ord("Q"), 27)


def gui_unavailable_reason() -> str | None:
    """Why no OpenCV window can be opened here, as one line with the fix; None when one can."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if match is None or match.group(1).upper() == "NONE":
        return (
            "this OpenCV build has no window support (opencv-python-headless); install opencv-python "
            "or run with --no-gui"
        )
    on_linux = sys.platform.startswith("linux")
    if on_linux and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or _qt_platform()):
        # Qt would abort the whole process without a display, so say it before trying.
        return "no display to open the window on (DISPLAY is not set); run with --no-gui or set DISPLAY"
    return None


def _qt_platform() -> str | None:
    return os.environ.get("QT_QPA_PLATFORM")


def _point_qt_at_system_fonts() -> None:
    """opencv-python's Qt looks for fonts in a folder the wheel does not ship and warns on every frame."""
    current = os.environ.get("QT_QPA_FONTDIR")
    if current is None or Path(current).is_dir():
        return
    for folder in SYSTEM_FONT_DIRS:
        if Path(folder).is_dir():
            os.environ["QT_QPA_FONTDIR"] = folder
            return


class Window(Protocol):
    def open(self) -> None: ...

    def show(self, image) -> bool: ...  # False = the user asked to quit

    def close(self) -> None: ...


class OpenCvWindow:
    """cv2.imshow with waitKey(1); reports q, Esc and a closed window as a request to quit."""

    def __init__(self, title: str = WINDOW_TITLE) -> None:
        self.title = title
        self._shown = False
        self.quit_reason: str | None = None  # why show() returned False, for the stop reason

    def open(self) -> None:
        reason = gui_unavailable_reason()
        if reason is not None:
            raise UserError(reason)
        _point_qt_at_system_fonts()
        try:
            # Resizable, aspect kept, no Qt toolbar: the video is the whole window.
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:
            raise UserError(f"cannot open a window ({one_line(exc, limit=120)}); run with --no-gui") from None

    def show(self, image) -> bool:
        if self._shown and self._closed():
            self.quit_reason = "window closed"
            return False
        if not self._shown:
            # Qt opens WINDOW_NORMAL windows at 400x300; start at the frame's size, capped to a laptop screen.
            h, w = image.shape[:2]
            scale = min(1.0, 1280 / w, 800 / h)
            cv2.resizeWindow(self.title, round(w * scale), round(h * scale))
        cv2.imshow(self.title, image)
        self._shown = True
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            self.quit_reason = f"quit key pressed ({'Esc' if key == 27 else 'q'})"
            return False
        if self._closed():
            self.quit_reason = "window closed"
            return False
        return True

    def _closed(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
