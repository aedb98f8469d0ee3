"""Which faces of a track are kept as unknown, and the recorder that writes them off the pipeline's path."""

from __future__ import annotations

import dataclasses
import threading

import cv2
import numpy as np
import pytest

from app.config import load_settings
from app.gallery.unknowns import open_unknowns
from app.recognition.identity import TrackLabel
from app.recognition.identity_config import IdentityConfig
from app.recognition.unknowns import KeepConfig, UnknownKeeper, UnknownRecorder, face_quality, start_recorder


@dataclasses.dataclass
class Face:
    track_id: int
    detection_box: np.ndarray
    landmarks: np.ndarray
    score: float = 0.99


@dataclasses.dataclass(frozen=True)
class Spec:
    model_id: str = "dlib-test"
    dim: int = 4
    metric: str = "euclidean"
    channel_order: str = "RGB"


def _frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (3, 3), 0)


def _face(track_id: int, x: float, size: float = 120.0, yaw: float = 0.0) -> Face:
    box = np.array([x, 100, x + size, 100 + size])
    cx, e = x + size / 2, size * 0.2
    landmarks = np.array(
        [[cx - e, 150], [cx + e, 150], [cx + yaw * e, 175], [cx - e * 0.8, 200], [cx + e * 0.8, 200]]
    )
    return Face(track_id, box, landmarks)


def _label(track_id: int, status: str) -> TrackLabel:
    return TrackLabel(track_id, "obama" if status == "known" else None, 0.5, status)


def _step(keeper, frame_index, faces, statuses, embed=True):
    embedded = [f.track_id for f in faces] if embed else []
    chips = np.zeros((len(embedded), 8, 8, 3), np.uint8)
    vectors = np.ones((len(embedded), 4), np.float32)
    labels = {f.track_id: _label(f.track_id, statuses[f.track_id]) for f in faces}
    return keeper.observe(_frame(), frame_index, faces, embedded, chips, vectors, labels)


def test_quality_prefers_large_frontal_faces():
    frame = _frame()
    faces = [_face(1, 50, 120), _face(2, 300, 40), _face(3, 450, 120, yaw=0.5)]
    q = face_quality(
        frame,
        np.stack([f.detection_box for f in faces]),
        np.stack([f.landmarks for f in faces]),
        np.array([0.99, 0.99, 0.99]),
        IdentityConfig(),
    )
    assert q[0] > q[1] and q[0] > q[2]


def test_an_unknown_track_gives_its_best_faces_when_it_ends():
    keeper = UnknownKeeper(KeepConfig(faces_per_track=2, min_quality=0.0, end_after=5))
    for i in range(4):
        assert _step(keeper, i, [_face(1, 50 + i, 40 + 15 * i)], {1: "unknown"}) == []
    out = []
    for i in range(4, 12):
        out += _step(keeper, i, [], {})
    assert len(out) == 1 and out[0].track == 1
    assert len(out[0].faces) == 2
    assert out[0].faces[0].quality >= out[0].faces[1].quality
    assert out[0].faces[0].frame == 3  # the largest face, seen last


def test_a_track_ever_named_is_never_kept():
    keeper = UnknownKeeper(KeepConfig(min_quality=0.0, end_after=2))
    _step(keeper, 0, [_face(1, 50)], {1: "unknown"})
    _step(keeper, 1, [_face(1, 50)], {1: "known"})
    _step(keeper, 2, [_face(1, 50)], {1: "unknown"})
    assert keeper.finish() == []


def test_pending_tracks_and_faces_under_the_minimum_quality_are_not_kept():
    keeper = UnknownKeeper(KeepConfig(min_quality=0.0))
    _step(keeper, 0, [_face(1, 50)], {1: "pending"})
    assert keeper.finish() == []
    keeper = UnknownKeeper(KeepConfig(min_quality=0.99))
    _step(keeper, 0, [_face(1, 50, 30)], {1: "unknown"})
    assert keeper.finish() == []


def test_crops_are_stored_in_bgr():
    keeper = UnknownKeeper(KeepConfig(min_quality=0.0), channel_order="RGB")
    chips = np.zeros((1, 8, 8, 3), np.uint8)
    chips[..., 0] = 255  # red in RGB
    face = _face(1, 50)
    keeper.observe(_frame(), 0, [face], [1], chips, np.ones((1, 4), np.float32), {1: _label(1, "unknown")})
    (sighting,) = keeper.finish()
    assert sighting.faces[0].crop_bgr[0, 0].tolist() == [0, 0, 255]


class SlowStore:
    """A store whose writes wait on an event: the recorder must not wait with it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.added = []
        self.closed = False

    def add(self, sighting):
        self.release.wait(10)
        self.added.append(sighting)
        return len(sighting.faces)

    def prune(self, retain_days, max_faces, now=None):
        return 0

    def close(self):
        self.closed = True


def test_the_recorder_never_waits_on_a_slow_store():
    store = SlowStore()
    keeper = UnknownKeeper(KeepConfig(min_quality=0.0, end_after=0))
    recorder = UnknownRecorder(store, keeper, retain_days=30, max_faces=100)  # type: ignore[arg-type]
    # 200 tracks end one after another while the store is stuck: observe returns every time
    for i in range(200):
        recorder.observe(_frame(), 2 * i, [_face(i, 50)], [i], np.zeros((1, 8, 8, 3), np.uint8),
                         np.ones((1, 4), np.float32), {i: _label(i, "unknown")})  # fmt: skip
    assert recorder.counters.dropped > 0
    store.release.set()
    recorder.close()
    assert store.closed
    assert recorder.counters.sightings + recorder.counters.dropped == 200


def test_the_recorder_writes_sightings_to_a_real_store(tmp_path):
    settings = load_settings({"qdrant_path": str(tmp_path / "g")}, env_file=None)
    recorder = start_recorder(settings, Spec(), IdentityConfig(), camera="door")
    assert recorder is not None
    for i in range(3):
        recorder.observe(_frame(), i, [_face(5, 50)], [5], np.zeros((1, 8, 8, 3), np.uint8),
                         np.ones((1, 4), np.float32), {5: _label(5, "unknown")})  # fmt: skip
    recorder.close()
    with open_unknowns(settings, Spec()) as store:
        faces = store.faces()
    assert len(faces) == 3 and {f.camera for f in faces} == {"door"}


def test_keeping_is_off_with_keep_unknown_false(tmp_path):
    settings = load_settings({"qdrant_path": str(tmp_path / "g"), "keep_unknown": "false"}, env_file=None)
    assert start_recorder(settings, Spec(), None, camera="door") is None
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("value", ["0", "100000"])
def test_faces_per_track_is_bounded(value):
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="--unknown-faces-per-track"):
        load_settings({"unknown_faces_per_track": value}, env_file=None)
