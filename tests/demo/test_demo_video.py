from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.demo import ground_truth_path, load_ground_truth, render, write_video
from app.demo.__main__ import main
from app.errors import UserError
from tests.demo.rendered_demo import RenderedDemo


@pytest.fixture(scope="module")
def short_video(rendered_demo: RenderedDemo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    scenario = replace(rendered_demo.scenario, n_frames=75)
    path = write_video(scenario, tmp_path_factory.mktemp("video") / "demo.mp4", sprites=rendered_demo.sprites)
    return path, scenario


def test_written_video_has_the_scenarios_frames_size_and_fps(
    short_video, rendered_demo: RenderedDemo
) -> None:
    path, scenario = short_video
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (1280, 720)
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    capture.release()
    assert len(decoded) == scenario.n_frames == 75
    # mp4v is lossy, but the decoded frames are the rendered ones.
    rendered = [frame for frame, _ in render(scenario, sprites=rendered_demo.sprites)]
    for i in (0, 37, 74):
        error = np.abs(decoded[i].astype(np.int16) - rendered[i].astype(np.int16)).mean()
        assert error < 4.0, f"frame {i} differs by {error:.1f} grey levels on average"


def test_ground_truth_file_round_trips(short_video, rendered_demo: RenderedDemo) -> None:
    path, scenario = short_video
    json_path = ground_truth_path(path)
    assert json_path == path.with_name("demo.gt.json") and json_path.is_file()
    truth = load_ground_truth(path)
    assert truth == load_ground_truth(json_path)
    assert truth.size == (1280, 720) and truth.fps == 25.0 and truth.n_frames == len(truth.frames) == 75
    assert [a.label for a in truth.actors] == ["obama", "biden", "obama"]
    assert [list(faces) for faces in truth.frames] == rendered_demo.truth[:75]
    raw = json.loads(json_path.read_text())
    assert set(raw["frames"][40][0]) >= {"id", "label", "box", "visible"}
    assert truth.visible_faces(40, 0.9) == [f for f in truth.frames[40] if f.visible >= 0.9]


def test_missing_or_broken_ground_truth_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_ground_truth(tmp_path / "none.mp4")
    broken = tmp_path / "broken.gt.json"
    broken.write_text('{"version": 1, "frames": []}')
    with pytest.raises(UserError, match="not valid"):
        load_ground_truth(broken)


def test_write_video_wants_mp4(rendered_demo: RenderedDemo, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"\.mp4"):
        write_video(rendered_demo.scenario, tmp_path / "demo.avi", sprites=rendered_demo.sprites)


def test_cli_makes_the_demo_and_the_bench_video(
    demo_images_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "demo.mp4"
    assert (
        main(["make", "--images", str(demo_images_dir), "--out", str(out), "--seconds", "1", "--seed", "3"])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    truth = load_ground_truth(out)
    assert truth.n_frames == 25 and truth.seed == 3 and truth.scenario == "standard"
    # A flat folder gives every photo (partial faces left out) an actor.
    assert sorted(a.label for a in truth.actors) == ["biden", "obama", "obama", "obama"]

    bench = tmp_path / "bench.mp4"
    args = [
        "make",
        "--preset",
        "bench1080",
        "--images",
        str(demo_images_dir),
        "--out",
        str(bench),
        "--seconds",
        "0.4",
    ]
    assert main(args) == 0
    truth = load_ground_truth(bench)
    assert truth.size == (1920, 1080) and truth.n_frames == 10
    assert all(len(faces) >= 8 for faces in truth.frames)


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: image folder") and err.count("\n") == 1
    assert (
        main(["make", "--size", "1281x720", "--images", str(tmp_path), "--out", str(tmp_path / "x.mp4")]) == 2
    )
    with pytest.raises(SystemExit):
        main(["make", "--size", "big"])


def test_cli_prints_the_demo_sets(demo_images_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sets", "--images", str(demo_images_dir)]) == 0
    sets = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in sets["enroll"]["obama"]] == ["obama.jpg"]
    assert [Path(p).name for p in sets["video"]["obama"]] == ["obama2.jpg", "obama3.jpg"]
