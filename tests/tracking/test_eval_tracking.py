import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tracking_and_identity_meet_the_acceptance_bar_on_generated_video():
    """End to end: RetinaFace + ByteTracker + TrackIdentities (dlib, Qdrant-edge) on the demo script, with and
    without unenrolled strangers."""
    done = subprocess.run(
        [sys.executable, str(REPO / "testbench" / "eval_tracking.py"), "--scenario", "standard", "strangers"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["idf1"] >= 0.95
    assert result["mota"] >= 0.9
    assert result["identity_flips"] == 0 and result["enrolled_misnamed"] == 0
    assert result["unknown_named_as_known"] == 0 and result["false_tracks_named"] == 0
    assert result["embeddings_per_detection"] <= 0.2  # at least 5x fewer embeddings than faces detected
    assert result["identity_accuracy"] >= 0.9
    assert result["frames_to_first_correct_name_max"] <= 15


def _last_json(args: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "testbench" / "eval_tracking.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_face_walking_behind_another_gives_no_wrong_name_and_no_flip_and_every_miss_has_a_cause():
    """Hard scenario, seed 1: at frame ~215 a face walks behind another and the tracker hands the front
    face to the hidden one's track for two frames; that track must not show its name on the front face."""
    result = _last_json(["--scenario", "hard", "--seeds", "1"])
    assert result["enrolled_misnamed"] == 0 and result["identity_flips"] == 0
    assert result["unknown_named_as_known"] == 0
    # Stuart's template settles 0.02-0.04 above threshold on his return: named by consistent_votes (0.802 of
    # the enrolled face-frames before that rule and the tracker's weak starts and re-finds; 0.828)
    assert result["enrolled_named"] >= 0.82
    # As a file shows it (NAME_LOOKAHEAD): more face-frames named, never a wrong one; and as a live camera.
    causal = result["causal"]
    assert result["name_lookahead"] > 0 and result["enrolled_named"] >= causal["enrolled_named"] >= 0.82
    assert causal["enrolled_misnamed"] == 0 and causal["identity_flips"] == 0
    assert causal["unknown_named_as_known"] == 0
    for sequence in result["sequences"].values():
        ours = sequence["ours"]
        lost = ours["enrolled_lost"]
        causes = sum(n for cause, n in lost.items() if cause not in _OVERLAPPING_COUNTS)
        assert causes == round(ours["enrolled_faces"] * (1 - ours["enrolled_named"]))
        assert lost["not_detected_small"] <= lost["not_detected"]


_OVERLAPPING_COUNTS = ("not_detected_small", "pending_on_later_track", "pending_after_restart")
