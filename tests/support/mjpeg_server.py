"""Loopback HTTP MJPEG server (stdlib only): loops JPEG frames as `multipart/x-mixed-replace` at a fixed FPS.

`MjpegHttpServer(frames, fps, port)` serves `GET /video.mjpg` on 127.0.0.1. `close()` drops every client
connection abruptly (mid-stream, no final boundary, RST) like a camera that loses power; `freeze()` keeps the
connections open but stops sending, like a stalled camera or a pulled cable. The controller in `servers.py`
wraps this with start/stop/restart on a fixed port.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

STREAM_PATH = "/video.mjpg"
BOUNDARY = "frame"
_POLL_S = 0.05  # how often blocked loops look at the stop/freeze flags
_JOIN_TIMEOUT_S = 2.0


class _StreamHandler(BaseHTTPRequestHandler):
    server: MjpegHttpServer
    protocol_version = "HTTP/1.0"  # one stream per connection, closed by the server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] != STREAM_PATH:
            self.send_error(404, f"the stream is at {STREAM_PATH}")
            return
        self.server.register_client(self.connection)
        try:
            self._stream()
        except OSError:
            pass  # the client left, or close() reset the connection: both are normal here
        finally:
            self.server.unregister_client(self.connection)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache, no-store")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        frames = self.server.frames
        period = 1.0 / self.server.fps
        index = 0
        next_due = time.monotonic()
        while not self.server.closing.is_set():
            if self.server.frozen.is_set():
                # Say nothing, keep the socket open; resync the clock so unfreezing does not burst.
                self.server.closing.wait(_POLL_S)
                next_due = time.monotonic()
                continue
            jpeg = frames[index % len(frames)]
            index += 1
            part = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode(
                    "ascii"
                )
                + jpeg
                + b"\r\n"
            )
            self.wfile.write(part)
            next_due += period
            delay = next_due - time.monotonic()
            if delay > 0:
                self.server.closing.wait(delay)
            else:
                next_due = time.monotonic()  # a slow reader gets the current frame, not a backlog

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        logger.debug("%s " + format, self.address_string(), *args)


class MjpegHttpServer(ThreadingHTTPServer):
    """Serves `frames` (JPEG bytes, looped) at `fps` on 127.0.0.1:`port` (0 = a free port) from a thread."""

    daemon_threads = True
    block_on_close = False  # close() joins the handler threads itself, with a bound
    allow_reuse_address = True  # restart on the same port right after close()

    def __init__(self, frames: list[bytes], fps: float, port: int = 0) -> None:
        if not frames:
            raise ValueError("MjpegHttpServer needs at least one JPEG frame")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.frames = frames
        self.fps = float(fps)
        self.closing = threading.Event()
        self.frozen = threading.Event()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._clients_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _StreamHandler)
        self._serve_thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name=f"mjpeg-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def client_count(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def register_client(self, connection: socket.socket) -> None:
        with self._clients_lock:
            self._clients[connection] = threading.current_thread()

    def unregister_client(self, connection: socket.socket) -> None:
        with self._clients_lock:
            self._clients.pop(connection, None)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("MJPEG client %s failed", client_address, exc_info=True)

    def freeze(self) -> None:
        self.frozen.set()

    def unfreeze(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        """Stop listening and reset every client connection; returns within a few seconds at most."""
        self.closing.set()
        self.shutdown()  # returns within one poll interval
        self.server_close()
        with self._clients_lock:
            clients = list(self._clients.items())
        for connection, _thread in clients:
            try:
                # Linger 0: the close that follows sends RST and leaves no TIME_WAIT on the port.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # shutdown wakes a handler blocked in send(); the handler thread then closes the socket.
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for _connection, thread in clients:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._serve_thread.join(max(0.0, deadline - time.monotonic()))
