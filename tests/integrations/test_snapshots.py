"""Snapshots: JPEG crops named by camera, time and track, never overwriting; retention by age and count
(the clock is injected)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.errors import UserError
from app.integrations.events import EventFanout
from app.integrations.snapshots import SnapshotRetention, SnapshotWriter, face_crop, snapshot_time
from app.pipeline.messages import FrameMeta, TrackedFaces

T0 = 1764590000.0  # 2025-12-01T11:53:20Z
DAY = 86400.0


def frame_with_square() -> np.ndarray:
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = (0, 0, 255)  # the "face": a red square at x 100-200, y 50-150
    return frame


def test_a_snapshot_is_a_readable_jpeg_of_the_face_with_a_margin(tmp_path):
    writer = SnapshotWriter(tmp_path / "snaps")
    writer.open()
    path = writer.write(frame_with_square(), [100, 50, 200, 150], "Front Door", 7, T0)
    assert path is not None and path.name == "front_door_20251201-115320-000_track7.jpg"
    image = cv2.imread(str(path))
    assert image.shape == (150, 150, 3)  # 25 % on each side
    centre = image[25:125, 25:125].reshape(-1, 3).mean(axis=0)
    assert centre[2] > 200 and centre[0] < 40  # the face is inside, in the middle
    assert snapshot_time(path) == pytest.approx(T0)


def test_a_snapshot_never_overwrites_a_file(tmp_path):
    writer = SnapshotWriter(tmp_path, full_frame=True)
    first = writer.write(frame_with_square(), [100, 50, 200, 150], "default", 1, T0)
    second = writer.write(frame_with_square(), [100, 50, 200, 150], "default", 1, T0)
    assert first is not None and second is not None and first != second
    assert second.name == "default_20251201-115320-000_track1-2.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "default_20251201-115320-000_track1-2.jpg",
        "default_20251201-115320-000_track1-2_frame.jpg",
        "default_20251201-115320-000_track1.jpg",
        "default_20251201-115320-000_track1_frame.jpg",
    ]
    assert cv2.imread(str(tmp_path / "default_20251201-115320-000_track1_frame.jpg")).shape == (200, 300, 3)


def test_a_crop_at_the_border_is_clipped_never_empty():
    frame = frame_with_square()
    assert face_crop(frame, [-50, -50, 10, 10]).shape[:2] == (25, 25)
    assert face_crop(frame, [290, 190, 400, 400]).size > 0


def test_retention_deletes_old_snapshots_by_age_and_by_count_and_nothing_else(tmp_path):
    writer = SnapshotWriter(tmp_path, full_frame=True)
    for day in range(10):
        writer.write(frame_with_square(), [100, 50, 200, 150], "default", day, T0 + day * DAY)
    (tmp_path / "holiday.jpg").write_bytes(b"not ours")
    now = T0 + 9 * DAY
    by_age = SnapshotRetention(tmp_path, max_age_s=7 * DAY, max_count=100, clock=lambda: now)
    assert by_age.prune() == 4  # days 0 and 1: crop and frame each
    tracks = sorted(int(p.stem.split("track")[1].split("_")[0]) for p in tmp_path.glob("default_*[0-9].jpg"))
    assert tracks == [2, 3, 4, 5, 6, 7, 8, 9]
    by_count = SnapshotRetention(tmp_path, max_age_s=7 * DAY, max_count=3, clock=lambda: now)
    assert by_count.prune() == 10
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        ["holiday.jpg"]
        + [f"default_{d}-115320-000_track{t}{s}.jpg" for d, t in (("20251208", 7), ("20251209", 8),
                                                                    ("20251210", 9)) for s in ("", "_frame")]
    )  # fmt: skip


def test_an_unwritable_snapshot_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"cannot create the snapshot folder .*SNAPSHOTS_DIR") as info:
        SnapshotWriter(blocker / "snaps").open()
    assert "\n" not in str(info.value)


def test_the_fanout_adds_camera_time_and_snapshot_to_the_event_and_draws_the_full_frame(tmp_path):
    writer = SnapshotWriter(tmp_path, full_frame=True)
    fanout = EventFanout(camera="porch", snapshots=writer, wall_clock=lambda: T0)
    event = {"time": 1.0, "frame": 25, "track": 3, "name": "Ada", "status": "known", "similarity": 0.6,
             "box": [100.0, 50.0, 200.0, 150.0]}  # fmt: skip
    meta = FrameMeta(0, 1, 25, 1.0, 300, 200)
    box = np.array([[100, 50, 200, 150]], np.float32)
    one = np.array([0.9], np.float32)
    faces = TrackedFaces(meta, np.array([3]), box, one, ["Ada"], ["known"], np.array([0.6], np.float32))
    full = fanout.publish(event, frame_with_square(), faces)
    snapshot = str(tmp_path / "porch_20251201-115320-000_track3.jpg")
    assert full == {**event, "camera": "porch", "timestamp": T0, "snapshot": snapshot}
    assert event["snapshot"] == snapshot  # the events file references it too
    drawn = cv2.imread(str(tmp_path / "porch_20251201-115320-000_track3_frame.jpg"))
    plain = frame_with_square()
    assert drawn.shape == plain.shape
    # The box outline is drawn just outside the red square (JPEG blurs a little: compare far apart).
    assert abs(int(drawn[48, 150].sum()) - int(plain[48, 150].sum())) > 100
