"""testbench/eval_clustering.py on two identity sets: its JSON line and the purity it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # embeds ~70 photos with the real models


def test_identity_sets_cluster_pure_and_the_last_line_is_json():
    done = subprocess.run(
        [sys.executable, "testbench/eval_clustering.py", "--sets", "johns", "families"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["sets"]) == {"johns", "families"}
    for figures in result["sets"].values():
        assert figures["purity"] >= 0.95 and figures["completeness"] >= 0.9
    assert result["eps"] == 0.48 and result["seconds_10k_faces"] > 0
