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
