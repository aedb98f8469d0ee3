"""GUI / sink stage: window control, annotated video, events and tracks files (JSON lines and MOT CSV),
drawing, and the clear error when no window can be opened."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from app.errors import UserError
from app.pipeline.messages import SourceInfo, TrackedFaces
from app.pipeline.stage_runner import StopPipeline
from app.stages import opencv_window as gui_module
from app.stages.gui import GuiStage, gui_unavailable_reason
from app.vision.drawing import KNOWN_BGR, PENDING_BGR, UNKNOWN_BGR, draw_faces, face_label
from tests.stages.stage_chain import put_frame, ring_of

SHAPE = (120, 160, 3)
SOURCE = {0: SourceInfo(frame_shape=SHAPE, fps=20.0, live=False, source="test")}


class FakeWindow:
    """Records what was shown; asks to quit after `quit_after` frames (like pressing q)."""

    instances: list[FakeWindow] = []

    def __init__(self, quit_after: int = 10**9) -> None:
        self.quit_after = quit_after
        self.shown: list[np.ndarray] = []
        self.opened = self.closed = False
        FakeWindow.instances.append(self)

    def open(self) -> None:
        self.opened = True

    def show(self, image) -> bool:
        self.shown.append(image.copy())
        return len(self.shown) < self.quit_after

    def close(self) -> None:
        self.closed = True


def faces(ref, rows) -> TrackedFaces:
    """rows: (track, (x1,y1,x2,y2), status, name, similarity)."""
    return TrackedFaces(
        meta=ref.meta,
        track_ids=np.array([r[0] for r in rows], np.int64),
        boxes=np.array([r[1] for r in rows], np.float32).reshape(-1, 4),
        scores=np.full(len(rows), 0.97, np.float32),
        names=[r[3] for r in rows],
        statuses=[r[2] for r in rows],
        similarities=np.array([math.nan if r[4] is None else r[4] for r in rows], np.float32),
    )


def frame(i: int) -> np.ndarray:
    return np.full(SHAPE, 40 + i, np.uint8)


SCRIPT = [
    [(1, (10, 20, 50, 70), "pending", None, None)],
    [(1, (12, 20, 52, 70), "unknown", None, 0.31)],
    [(1, (14, 20, 54, 70), "known", "Ada", 0.62), (2, (90, 30, 130, 80), "pending", None, 0.2)],
    [(1, (16, 20, 56, 70), "known", "Ada", 0.64), (2, (92, 30, 132, 80), "known", "Bob", 0.58)],
    [],
    [(2, (94, 30, 134, 80), "known", "Bea", 0.55)],
]


def run_script(stage: GuiStage, ring) -> None:
    for i, rows in enumerate(SCRIPT):
        ref = put_frame(ring, frame(i), i, fps=20.0)
        assert ring.claim(ref.meta.slot, ref.meta.seq)
        assert stage.process(faces(ref, rows)) == []
        assert ring.states()[ref.meta.slot] == "free"  # released by the last consumer


def test_sinks_write_video_events_and_tracks(tmp_path):
    out = {"output": tmp_path / "out" / "annotated.mp4", "events": tmp_path / "ev.jsonl",
           "tracks_out": tmp_path / "tracks.jsonl"}  # fmt: skip
    with ring_of(SHAPE) as (ring, handle):
        stage = GuiStage(handle, show_window=False, **out)
        stage.setup()
        stage.start(SOURCE)
        run_script(stage, ring)
        # Line-buffered: everything is on disk before close (a killed run leaves readable files).
        assert len(out["events"].read_text().splitlines()) == 4
        stage.close()

    events = [json.loads(line) for line in out["events"].read_text().splitlines()]
    assert [(e["frame"], e["track"], e["status"], e["name"]) for e in events] == [
        (1, 1, "unknown", None),  # a label was decided: unknown
        (2, 1, "known", "Ada"),  # ...then changed to a name
        (3, 2, "known", "Bob"),  # pending made no event; repeated labels make none either
        (5, 2, "known", "Bea"),
    ]
    assert events[1] == {
        "camera": "default",
        "time": 0.1,
        "frame": 2,
        "track": 1,
        "name": "Ada",
        "status": "known",
        "similarity": pytest.approx(0.62, abs=1e-4),
        "box": [14.0, 20.0, 54.0, 70.0],
    }

    rows = [json.loads(line) for line in out["tracks_out"].read_text().splitlines()]
    assert [(r["frame"], r["track"]) for r in rows] == [
        (0, 1),
        (1, 1),
        (2, 1),
        (2, 2),
        (3, 1),
        (3, 2),
        (5, 2),
    ]
    assert rows[0] == {"camera": "default", "frame": 0, "time": 0.0, "track": 1,
                       "box": [10.0, 20.0, 50.0, 70.0], "score": 0.97,
                       "name": None, "similarity": None, "status": "pending"}  # fmt: skip
    assert rows[1]["name"] is None and rows[1]["similarity"] == pytest.approx(0.31, abs=1e-4)
    assert rows[2]["name"] == "Ada" and rows[6]["time"] == 0.25

    video = cv2.VideoCapture(str(out["output"]))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(20.0)
    decoded = []
    while True:
        ok, image = video.read()
        if not ok:
            break
        decoded.append(image)
    assert len(decoded) == len(SCRIPT) and decoded[0].shape == SHAPE
    # Annotated: frame 2 shows Ada's green box where the raw frame was flat grey.
    edge = decoded[2][45, 11:18].astype(int)  # across the box's left edge (x=14), through codec blur
    greenness = edge[:, 1] - np.maximum(edge[:, 0], edge[:, 2])
    assert greenness.max() > 25 and abs(int(decoded[2][100, 80, 0]) - 42) < 6


def test_mot_csv_is_one_based_with_widths(tmp_path):
    path = tmp_path / "tracks.csv"
    with ring_of(SHAPE) as (ring, handle):
        stage = GuiStage(handle, show_window=False, tracks_out=path)
        stage.setup()
        stage.start(SOURCE)
        run_script(stage, ring)
        stage.close()
    rows = list(csv.reader(path.read_text().splitlines()))
    # box (10, 20, 50, 70) in 0-based pixels: MOTChallenge counts pixels from 1
    assert rows[0] == ["1", "1", "11.00", "21.00", "40.00", "50.00", "0.9700", "-1", "-1", "-1"]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 1), (2, 1), (3, 1), (3, 2), (4, 1), (4, 2), (6, 2)]


def test_window_quit_stops_the_pipeline(tmp_path):
    FakeWindow.instances.clear()
    with ring_of(SHAPE) as (ring, handle):
        stage = GuiStage(handle, show_window=True, window_factory=lambda: FakeWindow(quit_after=3))
        stage.setup()
        stage.start(SOURCE)
        window = FakeWindow.instances[-1]
        assert window.opened
        for i in range(2):
            ref = put_frame(ring, frame(i), i)
            ring.claim(ref.meta.slot, ref.meta.seq)
            stage.process(faces(ref, SCRIPT[3]))
        ref = put_frame(ring, frame(2), 2)
        ring.claim(ref.meta.slot, ref.meta.seq)
        with pytest.raises(StopPipeline, match="window closed"):
            stage.process(faces(ref, SCRIPT[3]))
        assert ring.states()[ref.meta.slot] == "free"  # released even on the last frame
        stage.close()
    assert window.closed and len(window.shown) == 3
    # What the window showed is annotated: boxes and the FPS / latency overlay.
    shown = window.shown[-1]
    assert int(shown[1, 1, 0]) < 42 - 10  # the darkened overlay panel in the corner
    assert tuple(int(v) for v in shown[60, 92]) == KNOWN_BGR  # Bob's box edge (track 2 at x=92)


def test_unwritable_outputs_fail_setup_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with ring_of(SHAPE) as (_, handle):
        with pytest.raises(UserError, match="cannot write the events file"):
            GuiStage(handle, show_window=False, events=blocker / "ev.jsonl").setup()
        stage = GuiStage(handle, show_window=False, output=tmp_path / "video.webm")
        stage.setup()
        with pytest.raises(UserError, match="name the --output file .mp4"):
            stage.start(SOURCE)


def test_no_window_support_or_no_display_is_explained(monkeypatch):
    monkeypatch.setattr(gui_module.cv2, "getBuildInformation", lambda: "  Video I/O:\n  GUI:   NONE\n")
    assert "opencv-python-headless" in gui_unavailable_reason() and "--no-gui" in gui_unavailable_reason()
    monkeypatch.setattr(gui_module.cv2, "getBuildInformation", lambda: "  GUI:   QT5\n")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert gui_unavailable_reason().startswith("no display to open the window on")
    monkeypatch.setenv("DISPLAY", ":0")
    assert gui_unavailable_reason() is None


def test_labels_and_colours():
    assert face_label(3, "Lin-Manuel Miranda", "known", 0.6234) == "#3 Lin-Manuel Miranda 0.62"
    assert face_label(4, None, "unknown", 0.21) == "#4 unknown 0.21"
    assert face_label(5, None, "pending", 0.3) == "#5 ..."
    assert face_label(6, None, "unknown", math.nan) == "#6 unknown"
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 40, 50, 90], [120, 40, 160, 90], [60, 40, 100, 90]], np.float32)
    draw_faces(
        image, boxes, [1, 2, 3], ["Ada", None, None], ["known", "unknown", "pending"], [0.6, 0.2, math.nan]
    )
    for x, colour in ((10, KNOWN_BGR), (120, UNKNOWN_BGR), (60, PENDING_BGR)):
        assert tuple(int(v) for v in image[65, x]) == colour  # the left edge of each box


def test_blur_unknown_hides_faces_not_known_in_what_is_shown():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    rows = [(1, (10, 30, 60, 90), "known", "Ada", 0.6), (2, (90, 30, 140, 90), "unknown", None, 0.2)]
    shown = {}
    for blur in (False, True):
        FakeWindow.instances.clear()
        with ring_of(SHAPE) as (ring, handle):
            stage = GuiStage(handle, show_window=True, window_factory=FakeWindow, blur_unknown=blur)
            stage.setup()
            stage.start(SOURCE)
            ref = put_frame(ring, image, 0, fps=20.0)
            assert ring.claim(ref.meta.slot, ref.meta.seq)
            stage.process(faces(ref, rows))
            stage.close()
        shown[blur] = FakeWindow.instances[0].shown[0]
    inside_unknown = (slice(45, 85), slice(95, 135))  # below the label, inside the box
    inside_known = (slice(45, 85), slice(15, 55))
    assert shown[True][inside_unknown].std() < shown[False][inside_unknown].std() / 2
    assert np.array_equal(shown[True][inside_known], shown[False][inside_known])


def test_several_cameras_write_a_video_each_and_rows_name_their_camera(tmp_path):
    from app.pipeline.frame_ring import StreamRings

    out_dir = tmp_path / "videos"
    tracks = tmp_path / "tracks.jsonl"
    with ring_of(SHAPE) as (ring_a, handle_a), ring_of(SHAPE) as (ring_b, handle_b):
        stage = GuiStage(StreamRings({0: handle_a, 1: handle_b}), show_window=False, output=out_dir,
                         tracks_out=tracks, cameras=["door", "yard"])  # fmt: skip
        stage.setup()
        stage.start(
            {i: SourceInfo(frame_shape=SHAPE, fps=20.0, live=False, source="t", stream=i) for i in (0, 1)}
        )
        for i in range(4):
            for stream, ring in ((0, ring_a), (1, ring_b)):
                ref = put_frame(ring, frame(i), i, fps=20.0)
                ref.meta.stream = stream
                assert ring.claim(ref.meta.slot, ref.meta.seq)
                stage.process(faces(ref, [(1, (10, 20, 50, 70), "known", "Ada", 0.6)]))
        stage.close()
    for name in ("door", "yard"):
        video = cv2.VideoCapture(str(out_dir / f"{name}.mp4"))
        count = 0
        while video.read()[0]:
            count += 1
        assert count == 4, name
    rows = [json.loads(line) for line in tracks.read_text().splitlines()]
    assert [r["camera"] for r in rows] == ["door", "yard"] * 4 and all(r["track"] == 1 for r in rows)


def test_an_nv12_ring_shows_and_saves_what_a_bgr_ring_of_its_pixels_does(tmp_path):
    """The window's canvas and the events' snapshots (crop and full frame) from an NVDEC camera's NV12 ring
    are those of a BGR ring holding the same decoded pixels; the slot is released as always."""
    from app.integrations.events import EventFanout
    from app.integrations.snapshots import SnapshotWriter
    from app.vision.pixel_format import NV12, bgr_to_nv12, nv12_to_bgr

    rng = np.random.default_rng(3)
    pictures = [cv2.GaussianBlur(rng.integers(0, 256, SHAPE, dtype=np.uint8), (0, 0), 2) for _ in SCRIPT]
    runs = {}
    for pixel_format in ("nv12", "bgr"):
        FakeWindow.instances.clear()
        folder = tmp_path / pixel_format
        fanout = EventFanout(camera="porch", snapshots=SnapshotWriter(folder, full_frame=True),
                             wall_clock=lambda: 1764590000.0)  # fmt: skip
        with ring_of(SHAPE, pixel_format=pixel_format) as (ring, handle):
            stage = GuiStage(handle, show_window=True, window_factory=FakeWindow, fanout=fanout)
            stage._overlay_lines = lambda msg: ["fixed"]  # not this machine's timings: the pixels compare
            stage.setup()
            stage.start(SOURCE)
            for i, rows in enumerate(SCRIPT):
                image = pictures[i] if pixel_format == NV12 else nv12_to_bgr(bgr_to_nv12(pictures[i]))
                ref = put_frame(ring, image, i, fps=20.0)
                assert ring.claim(ref.meta.slot, ref.meta.seq)
                stage.process(faces(ref, rows))
                assert ring.states()[ref.meta.slot] == "free"
            stage.close()
        snapshots = {p.name: cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))}
        runs[pixel_format] = (FakeWindow.instances[-1].shown, snapshots)
    (shown_nv12, snaps_nv12), (shown_bgr, snaps_bgr) = runs["nv12"], runs["bgr"]
    assert len(shown_nv12) == len(SCRIPT) and all(
        np.array_equal(a, b) for a, b in zip(shown_nv12, shown_bgr, strict=True)
    )
    assert len(snaps_nv12) == 8 and snaps_nv12.keys() == snaps_bgr.keys()  # 4 events: crop + frame each
    assert all(np.array_equal(snaps_nv12[k], snaps_bgr[k]) for k in snaps_nv12)
