"""Sources: telling files, URLs and webcams apart, one-line open errors with masked credentials, and a
live HTTP MJPEG stream (a phone camera) read through the capture stage into the ring."""

from __future__ import annotations

import http.server
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from app.errors import UserError
from app.pipeline.frame_ring import FrameRing, FrameRingHandle
from app.pipeline.stage_runner import NOTHING_YET
from app.stages.capture import CaptureStage
from app.stages.sources import mask_url, open_video, parse_source, scrub_secrets
from tests.stages.stage_chain import read_all
from tests.support.servers import MjpegServer
from tests.support.shared_data import HAMILTON


def test_parse_source_kinds():
    assert parse_source("0").kind == "webcam" and parse_source("0").target == 0 and parse_source("2").live
    assert parse_source("/dev/video1").kind == "webcam"
    spec = parse_source(" rtsp://admin:secret@10.0.0.5:554/stream1 ")
    assert spec.kind == "url" and spec.live and spec.target == "rtsp://admin:secret@10.0.0.5:554/stream1"
    assert spec.display == "rtsp://***@10.0.0.5:554/stream1"
    assert parse_source("http://192.168.1.20:8080/video").display == "http://192.168.1.20:8080/video"
    spec = parse_source(str(HAMILTON))
    assert spec.kind == "file" and not spec.live
    assert parse_source(f"file://{HAMILTON}").kind == "file"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "no video source given"),
        ("missing/clip.mp4", "video file missing/clip.mp4 does not exist"),
        (".", "is not a file"),
        ("ftp://user:pw@host/x.mp4", "unsupported video source scheme 'ftp' in ftp://***@host/x.mp4"),
    ],
)
def test_parse_errors_are_one_line(source, fragment):
    with pytest.raises(UserError) as info:
        parse_source(source)
    assert fragment in str(info.value) and "\n" not in str(info.value) and "pw" not in str(info.value)


def test_open_errors_name_the_source_without_credentials(tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    with pytest.raises(UserError, match="cannot decode video file .*notes.mp4"):
        open_video(parse_source(str(not_video)))
    with pytest.raises(UserError) as info:
        open_video(parse_source("rtsp://admin:hunter2@127.0.0.1:9/cam"))  # nothing listens on port 9
    message = str(info.value)
    assert "cannot open video stream rtsp://***@127.0.0.1:9/cam" in message and "hunter2" not in message
    with pytest.raises(UserError, match=r"no webcam at webcam 7 \(/dev/video7"):
        open_video(parse_source("7"))


def test_decode_threads_cap_ffmpegs_threads_and_frames_stay_the_same():
    import cv2

    frames = {}
    for threads in (0, 1, 2):
        cap = open_video(parse_source(str(HAMILTON)), threads=threads)
        if threads:
            assert cap.get(cv2.CAP_PROP_N_THREADS) == threads
        frames[threads] = [cap.read()[1] for _ in range(5)]
        cap.release()
    for threads in (1, 2):
        assert all(np.array_equal(a, b) for a, b in zip(frames[0], frames[threads], strict=True))


def test_mask_url_hides_every_form_of_credentials():
    assert mask_url("rtsp://admin:secret@10.0.0.5:554/stream1") == "rtsp://***@10.0.0.5:554/stream1"
    assert mask_url("rtsp://admin:se/cr@et@cam/live") == "rtsp://***@cam/live"  # unescaped '/' and '@'
    assert mask_url("http://cam/video.cgi?user=admin&pwd=s3cret&res=hd") == (
        "http://cam/video.cgi?user=***&pwd=***&res=hd"
    )
    assert mask_url("http://192.168.1.20:8080/video") == "http://192.168.1.20:8080/video"
    spec = parse_source("rtsp://admin:hunter2@cam:554/live")
    scrubbed = scrub_secrets(
        "Error opening rtsp://admin:hunter2@cam:554/live as admin:hunter2 (hunter2)", spec
    )
    assert "hunter2" not in scrubbed and "rtsp://***@cam:554/live" in scrubbed


def grey_frames(count: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """Frame i is filled with grey level 8 * i, so a reader can tell which frame it got."""
    return [np.full((size[1], size[0], 3), (8 * i) % 256, np.uint8) for i in range(count)]


def new_ring(shape, slots: int):
    lock = multiprocessing.get_context("spawn").Lock()
    name = f"facering-{os.getpid()}-src{time.monotonic_ns() % 10**9}"
    return FrameRing.create(name, slots, shape, lock), FrameRingHandle(name, lock)


def produce_until(capture: CaptureStage, count: int, timeout: float = 10.0) -> list:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        msg = capture.produce()
        if msg is None:
            break
        if msg is not NOTHING_YET:
            out.append(msg)
    return out


def test_mjpeg_stream_is_read_live_into_the_ring():
    frames = grey_frames(30)
    with MjpegServer(frames, fps=50) as server:
        url = server.url
        capture = CaptureStage(url, FrameRingHandle("unused", None), max_frames=30)
        info = capture.setup()
        assert info.live is True and info.frame_shape == (240, 320, 3) and info.source == url
        ring, handle = new_ring(info.frame_shape, slots=4)
        capture.frames = handle
        try:
            got = [
                (meta.frame_index, float(pixels.mean()), meta.source_time)
                for meta, pixels in read_all(capture, ring)
            ]
            assert capture.end_reason == "frame limit reached (30)"
            # The first frame (read during setup) is stale by the start and skipped; the rest arrive in order,
            # each with the pixels of its own frame (grey 8 * i, give or take JPEG).
            assert [i for i, _, _ in got] == list(range(1, 30))
            assert all(abs(mean - 8 * i) < 3 for i, mean, _ in got)
            assert got[-1][2] > got[0][2]  # source time runs from the first read
        finally:
            capture.close()
            ring.close()
            ring.unlink()


def test_live_source_keeps_the_newest_frames_when_the_pipeline_is_stuck():
    with MjpegServer(grey_frames(20), fps=100) as server:
        ring, handle = new_ring((240, 320, 3), slots=3)
        capture = CaptureStage(server.url, handle, max_frames=20)
        capture.setup()
        try:
            # Nobody consumes: a file would wait, a live source overwrites the oldest unclaimed frame.
            published = []
            while (msg := capture.produce()) is not None:
                if msg is not NOTHING_YET:
                    published.append(msg.meta)
            assert len(published) == 19 and ring.dropped == 16
            survivors = [m for m in published if ring.claim(m.slot, m.seq)]
            assert [m.frame_index for m in survivors] == [17, 18, 19]  # the newest won
            assert all(abs(float(ring.frame(m.slot).mean()) - 8 * m.frame_index) < 3 for m in survivors)
        finally:
            capture.close()
            ring.close()
            ring.unlink()


@contextmanager
def password_refused() -> Iterator[int]:
    """A camera that answers every request with 401 (a wrong password); yields its port."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_stream_credentials_work_and_never_show():
    with MjpegServer(grey_frames(5), fps=50) as server:  # takes any credentials
        url = server.url.replace("http://", "http://phone:s3cret@")
        capture = CaptureStage(url, FrameRingHandle("unused", None))
        info = capture.setup()
        assert "s3cret" not in info.source and info.source.startswith("http://***@127.0.0.1:")
        capture.close()
    with password_refused() as port:
        wrong = f"http://phone:wrong@127.0.0.1:{port}/video.mjpg"
        with pytest.raises(UserError) as info:
            CaptureStage(wrong, FrameRingHandle("unused", None)).setup()
        assert "http://***@127.0.0.1" in str(info.value) and "wrong" not in str(info.value)
