"""Per-frame results export (--tracks-out) against a generated video's ground truth, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import motmetrics as mm
import numpy as np
import pytest

from app.demo import demo_sets, load_ground_truth, standard_scenario, write_video
from tests.support.shared_data import SHARED_FACES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO_FILES = {
    "obama.jpg": SHARED_FACES / "knn_examples" / "train" / "obama" / "obama.jpg",
    "obama2.jpg": SHARED_FACES / "knn_examples" / "train" / "obama" / "obama2.jpg",
    "obama3.jpg": SHARED_FACES / "edge" / "obama3.jpg",
    "biden.jpg": SHARED_FACES / "knn_examples" / "train" / "biden" / "biden.jpg",
}
FPS = 25.0
VISIBLE = 0.9  # a face counts as visible when at least this much of its box shows


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of x1,y1,x2,y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def run_pipeline(video: Path, gallery: Path, tracks: Path, tmp_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["--source", str(video), "--no-gui", "--max-speed", "--gallery", str(gallery)]
    argv += ["--env-file", str(tmp_path / "none.env"), "--tracks-out", str(tracks)]
    result = subprocess.run(
        [sys.executable, "-m", "app.main", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export")
    images = root / "images"
    images.mkdir()
    for name, source in DEMO_FILES.items():
        (images / name).symlink_to(source)
    scenario = standard_scenario(demo_sets(images).video, size=(640, 360), fps=FPS, seconds=6.0, seed=1)
    video = write_video(scenario, root / "demo.mp4")
    gallery = root / "empty-gallery"  # boxes and ids only: naming is tested elsewhere
    jsonl, csv = root / "tracks.jsonl", root / "tracks.csv"
    return {
        "truth": load_ground_truth(video),
        "jsonl": jsonl,
        "csv": csv,
        "summary": run_pipeline(video, gallery, jsonl, root),
        "csv_summary": run_pipeline(video, gallery, csv, root),
    }


def test_jsonl_boxes_match_ground_truth_and_frames_line_up(exported):
    truth = exported["truth"]
    rows = [json.loads(line) for line in exported["jsonl"].read_text().splitlines()]
    assert rows and all(
        {"frame", "time", "track", "box", "score", "name", "similarity"} <= set(row) for row in rows
    )
    # Frame indices are the source's: 0-based, time = frame / fps, nothing beyond the video.
    assert all(abs(row["time"] - row["frame"] / FPS) < 1e-3 for row in rows)
    assert min(r["frame"] for r in rows) >= 0 and max(r["frame"] for r in rows) < truth.n_frames
    by_frame: dict[int, np.ndarray] = {}
    for row in rows:
        by_frame.setdefault(row["frame"], []).append(row["box"])
    visible = matched = 0
    for index, faces in enumerate(truth.frames):
        boxes = [f.box for f in faces if f.visible >= VISIBLE]
        if not boxes:
            continue
        visible += len(boxes)
        shown = by_frame.get(index)
        if shown is None:
            continue
        overlap = box_iou(np.array(boxes, dtype=float), np.array(shown, dtype=float))
        matched += int((overlap.max(axis=1) >= 0.5).sum())
    assert visible > 200
    assert matched / visible >= 0.95, (matched, visible)


def test_csv_reads_back_as_motchallenge_and_scores_against_ground_truth(exported):
    truth = exported["truth"]
    result = mm.io.loadtxt(str(exported["csv"]), fmt="mot15-2D")
    assert len(result) > 0 and result.index.get_level_values("FrameId").min() >= 1  # 1-based frames
    accumulator = mm.MOTAccumulator(auto_id=False)
    for index, faces in enumerate(truth.frames):
        frame_id = index + 1
        gt = [f for f in faces if f.visible >= VISIBLE]
        gt_boxes = np.array([f.box for f in gt], dtype=float).reshape(-1, 4)
        if frame_id in result.index.get_level_values("FrameId"):
            hyp = result.loc[frame_id]
            hyp_ids = hyp.index.get_level_values("Id").tolist()
            xywh = hyp[["X", "Y", "Width", "Height"]].to_numpy(dtype=float)
            hyp_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        else:
            hyp_ids, hyp_boxes = [], np.zeros((0, 4))
        distances = (
            1.0 - box_iou(gt_boxes, hyp_boxes)
            if len(gt) and len(hyp_ids)
            else np.zeros((len(gt), len(hyp_ids)))
        )
        distances[distances > 0.5] = np.nan
        accumulator.update([f.id for f in gt], hyp_ids, distances, frameid=frame_id)
    metrics = mm.metrics.create().compute(accumulator, metrics=["mota", "num_switches", "idf1"], name="run")
    assert metrics.loc["run", "mota"] > 0.85, metrics
    assert exported["csv_summary"]["frames"] == truth.n_frames
