"""A Qdrant server that is unreachable at start is a one-line error (fail fast); one that drops mid-run only
pauses naming: recognition keeps tracking, frames say "gallery unavailable", searches are retried on a
capped backoff and naming resumes when the server answers again.

qdrant-client's local mode cannot drop, so the server here is local mode behind a switch that makes every
call fail the way qdrant-client fails when its server goes away (`ResponseHandlingException` wrapping
httpx's error, or an HTTP 5xx `UnexpectedResponse` from a proxy in front of it).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from app.config import load_settings
from app.errors import UserError
from app.gallery.server import ServerGallery
from app.pipeline.frame_ring import FrameRing, FrameRingHandle
from app.pipeline.messages import FrameMeta, FrameRef, SourceInfo, StageStamp, TrackedFaces
from app.pipeline.reconnect import BackoffPolicy
from tests.support.shared_data import HAMILTON

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
LIN = "Lin-Manuel Miranda"
FAST = BackoffPolicy(first_s=0.05, factor=2.0, cap_s=0.4, jitter=0.0)

SERVER_GONE: dict[str, Callable[[], Exception]] = {
    "refused": lambda: ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused")),
    "timeout": lambda: ResponseHandlingException(httpx.ReadTimeout("timed out")),
    "bad gateway": lambda: UnexpectedResponse(502, "Bad Gateway", b"upstream down", httpx.Headers()),
}


class DroppingClient:
    """A qdrant-client whose server can be switched off: every call then raises `error()`."""

    def __init__(
        self,
        inner: QdrantClient,
        error: Callable[[], Exception] = SERVER_GONE["refused"],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.error = error
        self.clock = clock
        self.down = False
        self.failed_at: list[float] = []

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args, **kwargs):
            if self.down:
                self.failed_at.append(self.clock())
                raise self.error()
            return attr(*args, **kwargs)

        return call


@dataclass(frozen=True)
class Spec:
    model_id: str = "dlib-0123456789ab"
    dim: int = 128
    metric: str = "euclidean"


def test_search_against_a_dropped_server_is_a_one_line_user_error():
    client = DroppingClient(QdrantClient(":memory:"))
    gallery = ServerGallery(client, "faces", Spec(), where="http://qdrant:6333")
    gallery.add("alice", np.ones((2, 128), np.float32))
    client.down = True
    for make in SERVER_GONE.values():
        client.error = make
        with pytest.raises(UserError) as info:
            gallery.search(np.ones((1, 128), np.float32))
        message = str(info.value)
        assert "\n" not in message and "Qdrant failed to search the gallery at http://qdrant:6333" in message
    client.down = False
    assert gallery.search(np.ones((1, 128), np.float32))[0][0].name == "alice"  # back: nothing to reopen
    gallery.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: nothing listens there


def test_unreachable_server_at_start_is_a_one_line_error_exit_2(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "app.main", "--env-file", str(tmp_path / "none.env"), "--source",
         str(HAMILTON), "--no-gui", "--qdrant-host", "127.0.0.1", "--qdrant-port", str(port)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert lines == [
        f"error: embed: Qdrant failed to open the gallery at http://127.0.0.1:{port} collection 'faces': "
        "[Errno 111] Connection refused (check QDRANT_HOST, QDRANT_PORT, QDRANT_API_KEY, QDRANT_HTTPS)"
    ]  # a refused connection, reported as such: no retrying at start (the run's timeout is only a guard)


# -- recognition with a server that drops mid-run ------------------------------------------------------------


def clip(start: int, stop: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(HAMILTON))
    frames = [cap.read()[1] for _ in range(stop)]
    cap.release()
    return frames[start:]


@pytest.fixture(scope="module")
def lin_vectors() -> np.ndarray:
    """Lin-Manuel Miranda as he looks in his shot of the clip (frames 100, 130, 160, 190)."""
    from app.recognition.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer(load_settings(env_file=None))
    vectors = []
    for image in (clip(i, i + 1)[0] for i in (100, 130, 160, 190)):
        found = analyzer.detect(image)
        vectors.append(analyzer.embed(image, found.landmarks[:1]))
    return np.concatenate(vectors)


class FrameClock:
    """Time that moves by one frame period per fed frame: retry pacing measured in video time, so the test
    does not depend on how fast this machine runs the models."""

    def __init__(self, fps: float = 30.0) -> None:
        self.period = 1.0 / fps
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.period


@contextmanager
def recognition(
    tmp_path: Path, client: DroppingClient, vectors: np.ndarray, clock: FrameClock
) -> Iterator[Callable]:
    """Detect, postprocess and recognize stages in this process, the gallery served by `client`, retries
    paced by `clock`; yields `feed(image, index, segment) -> TrackedFaces`."""
    from app.stages.detect import DetectStage
    from app.stages.postprocess import PostprocessStage
    from app.stages.recognize import RecognizeStage

    settings = load_settings({"qdrant_path": str(tmp_path / "unused")}, env_file=None)
    lock = multiprocessing.get_context("spawn").Lock()
    name = f"facering-{os.getpid()}-gu{time.monotonic_ns() % 10**9}"
    ring = FrameRing.create(name, 4, (360, 640, 3), lock)
    handle = FrameRingHandle(name, lock)
    stages = [
        DetectStage(handle, DETECTOR),
        PostprocessStage(0.1, 0.4),
        RecognizeStage(handle, settings, gallery_backoff=FAST, clock=clock),
    ]
    try:
        for stage in stages:
            stage.setup()
        recognize = stages[2]
        recognize.start({0: SourceInfo(frame_shape=(360, 640, 3), fps=29.97, live=False, source="test")})
        recognize.gallery.close()  # the embedded one from the settings: replaced by the "server"
        recognize.gallery = ServerGallery(client, "faces", recognize.spec, where="http://qdrant:6333")
        recognize.gallery.add(LIN, vectors)

        def feed(image: np.ndarray, index: int, segment: int = 0) -> TrackedFaces:
            slot = ring.acquire(live=False, timeout=1.0)
            ring.frame(slot)[:] = image
            ring.publish(slot, index + 1)
            meta = FrameMeta(slot, index + 1, index, index / 30, 640, 360, [StageStamp("capture", 0, 0)],
                             segment=segment)  # fmt: skip
            [raw] = stages[0].process(FrameRef(meta))
            [found] = stages[1].process(raw)
            [tracked] = stages[2].process(found)
            ring.release(slot, index + 1)
            clock.tick()
            return tracked

        yield feed
    finally:
        for stage in stages:
            stage.close()
        handle.close()
        ring.close()
        ring.unlink()


@pytest.mark.parametrize("failure", ["refused", "bad gateway"])
def test_recognition_keeps_tracking_while_the_gallery_is_away(tmp_path, lin_vectors, failure, caplog):
    caplog.set_level(logging.INFO, logger="app.stages.embed")
    clock = FrameClock()
    client = DroppingClient(QdrantClient(":memory:"), SERVER_GONE[failure], clock)
    frames = clip(86, 206)  # Lin-Manuel's shot: one face on every frame
    out: list[TrackedFaces] = []
    with recognition(tmp_path, client, lin_vectors, clock) as feed:
        for i, image in enumerate(frames):
            if i == 40:
                client.down = True  # the server drops
            if i == 85:
                client.down = False  # and comes back
            # A gap in the source at 60 (a reconnect): a new track that the gallery cannot name yet.
            out.append(feed(image, i, segment=0 if i < 60 else 1))
    up, down_same_track, down_new_track, after = out[:40], out[40:60], out[60:85], out[85:]
    assert up[-1].names == [LIN] and not any(r.gallery_unavailable for r in up)
    # The track named before the drop keeps its name and id while the server is away: tracking goes on.
    assert {int(r.track_ids[0]) for r in up[-5:] + down_same_track if len(r)} == {int(up[-1].track_ids[0])}
    assert all(r.names == [LIN] for r in down_same_track if len(r))
    # After the gap: a new track (a new id), pending on every frame: nothing can be checked in the gallery.
    new_id = int(down_new_track[0].track_ids[0])
    assert new_id > int(up[-1].track_ids[0]) and all(new_id in r.track_ids for r in down_new_track)
    assert all(s == "pending" for r in down_new_track for s in r.statuses)
    assert all(name is None for r in down_new_track for name in r.names)
    # Flagged from the first failed search (a refresh of the known track, or the new track at the latest)
    # until the server is back.
    flags = [r.gallery_unavailable for r in out[40:85]]
    assert flags.index(True) <= 20 + 3 and all(flags[flags.index(True) :])
    # Retries back off (0.05, 0.1, 0.2, 0.4, 0.4 ... s): no search on every frame against a dead server.
    gaps = np.diff(client.failed_at)
    expected = [min(FAST.cap_s, FAST.first_s * 2**k) for k in range(len(gaps))]
    assert len(client.failed_at) >= 3 and all(g >= e - 0.01 for g, e in zip(gaps, expected, strict=True)), (
        gaps
    )
    # The server is back: within the backoff cap (0.4 s = 12 frames) the flag clears and the name returns.
    recovered = next(i for i, r in enumerate(after) if not r.gallery_unavailable)
    assert recovered <= round(FAST.cap_s / clock.period) + 1, [r.statuses for r in after]
    assert after[-1].names == [LIN], [r.statuses for r in after]
    assert caplog.text.count("gallery unavailable (") == 1
    assert caplog.text.count("gallery available again after") == 1
