"""The pipeline on a damaged gallery or with a detector given as the embedder: one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.pipeline.test_bad_input import HAMILTON, REPO, one_error_line, run_cli
from tests.support.shared_data import SHARED_FACES

pytestmark = pytest.mark.slow


def test_a_truncated_vector_file_stops_the_run_with_the_fix(tmp_path):
    gallery = tmp_path / "g"
    subprocess.run(
        [sys.executable, "-m", "app.enroll", "--gallery", str(gallery), "add", "obama",
         str(SHARED_FACES / "knn_examples" / "train" / "obama" / "obama.jpg")],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    shard = json.loads((gallery / "faces" / "gallery.json").read_text())["shard"]
    (chunk,) = (gallery / "faces" / shard).glob("segments/*/vector_storage/vectors/chunk_0.mmap")
    chunk.write_bytes(b"")
    line = one_error_line(
        run_cli(
            tmp_path, "--source", str(HAMILTON), "--no-gui", "--gallery", str(gallery), "--max-frames", "5"
        )
    )
    assert line.startswith(f"error: embed: gallery at {gallery / 'faces'} is damaged: shard storage (")
    assert line.endswith("(python -m app.enroll restore DIR), or move the gallery folder away and re-enroll")


def test_the_detector_given_as_the_embedder_is_named(tmp_path):
    detector = REPO / "checkpoints" / "retinaface_mnet025.onnx"
    line = one_error_line(
        run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--gallery", str(tmp_path / "g"),
                "--embedder-model", str(detector), "--embedder", "dlib", "--max-frames", "5")
    )  # fmt: skip
    assert line.startswith(f"error: embed: {detector} is not a face embedder: its output is ?x?x4")
    assert not (tmp_path / "g").exists()
