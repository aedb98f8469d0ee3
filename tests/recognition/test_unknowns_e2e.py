"""Unknown faces end to end with the real pipeline: strangers on repeat visits are kept and clustered, one is
named through the CLI, and the same video then names them (testbench/eval_unknowns.py), plus enrolling a
person from a clip's track."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.demo import demo_sets, write_video
from app.demo.visits import visits_scenario

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real processes over generated video: tens of seconds each


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True)


def test_strangers_are_kept_clustered_named_and_then_recognised():
    done = run("testbench/eval_unknowns.py")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["enrolled_kept"] == 0
    assert set(result["kept_by_person"]) == {"alex_lacamoire", "kit_harington", "rose_leslie"}
    assert result["purity"] >= 0.95
    assert min(result["stranger_share_in_one_cluster"].values()) >= 0.9
    assert result["named_recognised"] and result["wrong_names"] == 0


def test_add_from_video_takes_the_chosen_track_or_refuses_a_crowd(tmp_path):
    video = demo_sets().video
    people = {"obama": video["obama"], "biden": video["biden"]}
    clip = write_video(visits_scenario(people, rounds=1, visit_s=2.0, pause_s=0.5), tmp_path / "two.mp4")
    gallery = tmp_path / "gallery"
    done = run("-m", "app.enroll", "add", "obama", "--video", clip, "--gallery", gallery)
    assert done.returncode == 2 and "several faces" in done.stderr and done.stderr.count("\n") == 1
    assert not gallery.exists()
    tracks = tmp_path / "tracks.jsonl"
    done = run("-m", "app.main", "--source", clip, "--no-gui", "--max-speed", "--gallery", gallery,
               "--tracks-out", tracks)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in tracks.read_text().splitlines()]
    leftmost = min(rows, key=lambda r: r["box"][0])["track"]  # the person on the left
    done = run("-m", "app.enroll", "add", "lefty", "--video", clip, "--track", leftmost, "--tracks", tracks,
               "--gallery", gallery, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["added"] == 5 and doc["embeddings"] == 5
    done = run("-m", "app.enroll", "add", "x", "--video", clip, "--track", "999", "--tracks", tracks,
               "--gallery", gallery)  # fmt: skip
    assert done.returncode == 2 and "track 999 is not in" in done.stderr


def test_the_pipeline_refuses_unknowns_kept_with_another_embedder(tmp_path):
    import dataclasses

    import numpy as np

    from app.config import load_settings
    from app.gallery.unknowns import open_unknowns
    from tests.support.unknowns import sighting_of

    @dataclasses.dataclass(frozen=True)
    class Other:
        model_id: str = "arcface-123"
        dim: int = 128
        metric: str = "cosine"

    gallery = tmp_path / "gallery"
    with open_unknowns(load_settings({"qdrant_path": str(gallery)}, env_file=None), Other()) as store:
        store.add(sighting_of(np.ones(128, np.float32) / 12, 2, 1.0, np.random.default_rng(0)))
    clip = REPO.parent / "shared" / "data" / "faces" / "short_hamilton_clip.mp4"
    done = run("-m", "app.main", "--source", clip, "--no-gui", "--max-speed", "--gallery", gallery)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "kept with embedder arcface-123" in errors[0] and "forget --all" in errors[0]
