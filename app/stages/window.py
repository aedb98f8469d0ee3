"""One window for every camera: a mosaic of their latest pictures, or one camera full size.

`MosaicWindow` keeps each camera's latest annotated picture (`update`) and note (`set_note`: "reconnecting",
an error line) and paints on `show()`: the mosaic, or the selected camera alone. A click on a tile or a
number key 1-9 shows that camera full size; 0, the same number again or a click returns to the mosaic.
q / Esc or closing the window quit (`show()` returns False and `last_stop_reason` says which). With one
camera the window shows it full size, as a single-stream run always did (plus the colour legend).

The OpenCV calls live in `OpenCvBackend`, a thin layer behind the `WindowBackend` protocol, so the selection
logic runs in tests without a display. With several cameras the window repaints at most `refresh_hz` times a
second however many frames arrive (16 cameras at 30 FPS would otherwise repaint 480 times a second), and
less often when a paint is slow, so that painting takes at most `max_paint_share` of the time (16 cameras of
1080p take ~25 ms a paint on a loaded 2-core CPU: ~10 paints a second rather than a whole core at 30). One
camera repaints on every frame, as before. Call `show()` also when no frame came for a while (every 50 ms,
say): it reads the keys and paints the notes of cameras that went quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import cv2
import numpy as np

from app.stages.opencv_window import QUIT_KEYS, WINDOW_TITLE, OpenCvWindow
from app.vision.drawing import draw_legend, draw_note, draw_overlay
from app.vision.mosaic import (
    EMPTY_TILE_BGR,
    MAX_CANVAS_WH,
    Rect,
    canvas_size,
    compose_mosaic,
    tile_at,
    tile_label,
    tile_rects,
)

QUIT_PRESSED = "quit key pressed (q)"  # the run's stop reason, as the single-window GUI words it
ESC_PRESSED = "quit key pressed (Esc)"
WINDOW_CLOSED = "window closed"
FIRST_SIZE_WH = (1280, 800)  # the window opens at the picture's size, capped to a laptop screen
PLACEHOLDER_WH = (1280, 720)  # the picture's shape before any camera delivered one
WAITING_NOTE = "waiting for the first picture"


class WindowBackend(Protocol):
    """The few window calls the mosaic needs; OpenCV's highgui in a run, a fake in tests."""

    def open(self, title: str) -> None: ...

    def resize(self, title: str, width: int, height: int) -> None: ...

    def show(self, title: str, image: np.ndarray) -> None: ...

    def poll_key(self) -> int | None: ...  # the key pressed since the last poll (0-255), None for none

    def is_open(self, title: str) -> bool: ...

    def on_click(self, title: str, callback: Callable[[int, int], None]) -> None: ...  # picture pixels

    def close(self, title: str) -> None: ...


class OpenCvBackend:
    """cv2 highgui: a resizable window (opened as `OpenCvWindow` does), waitKey(1), left clicks."""

    def __init__(self) -> None:
        self._windows: dict[str, OpenCvWindow] = {}

    def open(self, title: str) -> None:
        window = OpenCvWindow(title)
        window.open()  # the display and highgui checks, the one-line errors
        self._windows[title] = window

    def resize(self, title: str, width: int, height: int) -> None:
        cv2.resizeWindow(title, width, height)

    def show(self, title: str, image: np.ndarray) -> None:
        cv2.imshow(title, image)

    def poll_key(self) -> int | None:
        key = cv2.waitKey(1)
        return None if key == -1 else key & 0xFF

    def is_open(self, title: str) -> bool:
        try:
            return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def on_click(self, title: str, callback: Callable[[int, int], None]) -> None:
        def on_mouse(event: int, x: int, y: int, _flags: int, _param: object) -> None:
            if event == cv2.EVENT_LBUTTONUP:
                callback(x, y)

        cv2.setMouseCallback(title, on_mouse)

    def close(self, title: str) -> None:
        window = self._windows.pop(title, None)
        if window is not None:
            window.close()


class MosaicWindow:
    """The run's window: every camera in a mosaic, or one selected camera full size."""

    def __init__(
        self,
        names: Sequence[str],
        title: str = WINDOW_TITLE,
        backend: WindowBackend | None = None,
        max_canvas_wh: tuple[int, int] = MAX_CANVAS_WH,
        refresh_hz: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_paint_share: float = 0.25,
        legend: bool = True,
    ) -> None:
        if not names:
            raise ValueError("a window needs at least one camera")
        self.names = list(names)
        self.title = title
        self.backend: WindowBackend = backend if backend is not None else OpenCvBackend()
        self.max_canvas_wh = max_canvas_wh
        self.refresh_interval = 1.0 / refresh_hz if refresh_hz > 0 and len(self.names) > 1 else 0.0
        self.clock = clock
        self.max_paint_share = max_paint_share
        self._paint_interval = self.refresh_interval
        self.legend = legend
        self.last_stop_reason: str | None = None
        self._frames: list[np.ndarray | None] = [None] * len(self.names)
        self._notes: list[str | None] = [None] * len(self.names)
        self._selected: int | None = None
        self._canvas: np.ndarray | None = None
        self._canvas_from_frame = False
        self._rects: list[Rect] = []
        self._view: np.ndarray | None = None
        self._shown = False
        self._last_paint: float | None = None

    @property
    def cameras(self) -> int:
        return len(self.names)

    @property
    def selected(self) -> int | None:
        """The camera shown full size; None = the mosaic. With one camera, always that camera."""
        return 0 if self.cameras == 1 else self._selected

    def select(self, index: int | None) -> None:
        if index is not None and not 0 <= index < self.cameras:
            raise IndexError(f"no camera {index}: there are {self.cameras}")
        self._selected = index

    def open(self) -> None:
        self.backend.open(self.title)
        self.backend.on_click(self.title, self.handle_click)

    def update(self, camera_index: int, image: np.ndarray) -> None:
        """The latest annotated picture of this camera, kept by reference: pass a fresh array each time."""
        self._frames[camera_index] = image

    def set_note(self, camera_index: int, note: str | None) -> None:
        """A line shown over this camera's tile ("reconnecting", an error); None clears it."""
        self._notes[camera_index] = note

    def show(self, image: np.ndarray | None = None) -> bool:
        """Paint the window and read the keyboard; False = quit (q / Esc / window closed).

        `show(image)` is `update(0, image)` then `show()`: the single-stream window's call.
        """
        if image is not None:
            self.update(0, image)
        if self._shown and not self.backend.is_open(self.title):
            return self._stop(WINDOW_CLOSED)
        now = self.clock()
        if self._last_paint is not None and now - self._last_paint < self._paint_interval:
            return True
        picture = self.render()
        if not self._shown:
            h, w = picture.shape[:2]
            scale = min(1.0, FIRST_SIZE_WH[0] / w, FIRST_SIZE_WH[1] / h)
            self.backend.resize(self.title, round(w * scale), round(h * scale))
        self.backend.show(self.title, picture)
        self._shown = True
        self._last_paint = now
        if self.refresh_interval > 0:
            self._paint_interval = max(self.refresh_interval, (self.clock() - now) / self.max_paint_share)
        key = self.backend.poll_key()
        if key is not None and not self.handle_key(key):
            return False
        if not self.backend.is_open(self.title):
            return self._stop(WINDOW_CLOSED)
        return True

    def handle_key(self, key: int) -> bool:
        """q / Esc: quit (False). 1-9: that camera full size (again: back to the mosaic). 0: the mosaic."""
        if key in QUIT_KEYS:
            return self._stop(ESC_PRESSED if key == 27 else QUIT_PRESSED)
        if self.cameras == 1:
            return True
        if key == ord("0"):
            self._selected = None
        elif ord("1") <= key <= ord("9"):
            index = key - ord("1")
            if index < self.cameras:
                self._selected = None if self._selected == index else index
        return True

    def handle_click(self, x: int, y: int) -> None:
        """A click on a tile shows that camera full size; a click on one camera returns to the mosaic."""
        if self.cameras == 1:
            return
        if self._selected is not None:
            self._selected = None
            return
        self._selected = tile_at(self._rects, x, y)

    def render(self) -> np.ndarray:
        """What the window shows now: the mosaic, or the selected camera with its note."""
        selected = self.selected
        picture = self._render_mosaic() if selected is None else self._render_one(selected)
        if self.legend:
            draw_legend(picture, self._keys())
        return picture

    def close(self) -> None:
        self.backend.close(self.title)

    def _stop(self, reason: str) -> bool:
        self.last_stop_reason = reason
        return False

    def _keys(self) -> tuple[str, ...]:
        if self.cameras == 1:
            return ("q quit",)
        last = min(self.cameras, 9)
        return ("q quit", f"1-{last} camera" if last > 1 else "1 camera", "0 mosaic")

    def _render_mosaic(self) -> np.ndarray:
        first = next((frame for frame in self._frames if frame is not None), None)
        if self._canvas is None or (first is not None and not self._canvas_from_frame):
            frame_wh = PLACEHOLDER_WH if first is None else (first.shape[1], first.shape[0])
            width, height = canvas_size(self.cameras, frame_wh, self.max_canvas_wh)
            self._canvas = np.empty((height, width, 3), np.uint8)
            self._canvas_from_frame = first is not None
            self._rects = tile_rects(self.cameras, (width, height))
        canvas_wh = (self._canvas.shape[1], self._canvas.shape[0])
        return compose_mosaic(self._frames, self.names, self._notes, canvas_wh, out=self._canvas)

    def _render_one(self, index: int) -> np.ndarray:
        frame, note = self._frames[index], self._notes[index]
        if frame is None:
            shape = (PLACEHOLDER_WH[1], PLACEHOLDER_WH[0], 3)
            if self._canvas is not None:
                shape = self._canvas.shape
            view = self._buffer(shape)
            view[:] = EMPTY_TILE_BGR
            note = note or WAITING_NOTE
        else:
            # A copy: the legend and note must not pile up on the caller's picture, shown again next time.
            view = self._buffer(frame.shape)
            np.copyto(view, frame)
        if note:
            draw_note(view, note)
        if self.cameras > 1:
            draw_overlay(view, [tile_label(index, self.names[index])], bottom=True, size=1.0)
        return view

    def _buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._view is None or self._view.shape != shape:
            self._view = np.empty(shape, np.uint8)
        return self._view
