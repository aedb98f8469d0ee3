"""A phone-camera-like HTTP MJPEG stream (multipart/x-mixed-replace of JPEG frames) served from a thread."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np

BOUNDARY = "frameboundary"


def grey_frames(count: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """Frame i is filled with grey level 8 * i, so a reader can tell which frame it got."""
    return [np.full((size[1], size[0], 3), (8 * i) % 256, np.uint8) for i in range(count)]


@contextmanager
def mjpeg_server(
    frames: list[np.ndarray] | Callable[[], list[np.ndarray]],
    fps: float = 25.0,
    credentials: str | None = None,
) -> Iterator[str]:
    """Serve `frames` once per connection at `fps`, then end the stream; yields the stream URL.

    With `credentials` ("user:pass") the URL carries them and the server demands them (HTTP basic auth).
    """
    import base64

    expected = "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if expected is not None and self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            images = frames() if callable(frames) else frames
            for image in images:
                ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                assert ok
                data = jpeg.tobytes()
                header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                part = header.encode() + data + b"\r\n"
                try:
                    self.wfile.write(part)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                time.sleep(1.0 / fps)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address
    auth = f"{credentials}@" if credentials else ""
    try:
        yield f"http://{auth}{host}:{port}/video.mjpg"
    finally:
        server.shutdown()
        server.server_close()
