"""The stop reason says what the user did: a quit key is not a closed window."""

from __future__ import annotations

import numpy as np
import pytest

import app.stages.opencv_window as gui_module
from app.stages.opencv_window import OpenCvWindow


@pytest.fixture
def fake_highgui(monkeypatch):
    state = {"key": -1, "visible": 1.0}
    monkeypatch.setattr(gui_module.cv2, "imshow", lambda *_: None)
    monkeypatch.setattr(gui_module.cv2, "resizeWindow", lambda *_: None)
    monkeypatch.setattr(gui_module.cv2, "waitKey", lambda *_: state["key"])
    monkeypatch.setattr(gui_module.cv2, "getWindowProperty", lambda *_: state["visible"])
    return state


@pytest.mark.parametrize(
    ("key", "reason"), [(ord("q"), "quit key pressed (q)"), (27, "quit key pressed (Esc)")]
)
def test_a_quit_key_is_reported_as_such(fake_highgui, key, reason):
    window = OpenCvWindow()
    image = np.zeros((20, 30, 3), np.uint8)
    assert window.show(image) is True and window.quit_reason is None
    fake_highgui["key"] = key
    assert window.show(image) is False and window.quit_reason == reason


def test_closing_the_window_is_reported_as_window_closed(fake_highgui):
    window = OpenCvWindow()
    image = np.zeros((20, 30, 3), np.uint8)
    window.show(image)
    fake_highgui["visible"] = 0.0
    assert window.show(image) is False and window.quit_reason == "window closed"
