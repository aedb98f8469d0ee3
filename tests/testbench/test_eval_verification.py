import csv
import json
from pathlib import Path

import numpy as np
import pytest

from app.errors import UserError
from tests.support.shared_data import SHARED_FACES
from tests.support.testbench_scripts import load_script

REPO = Path(__file__).resolve().parents[2]


ev = load_script("eval_verification")
make_pairs = load_script("make_pairs")


def test_auc_by_rank_statistic():
    same = np.array([True, True, False, False])
    assert ev.roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), same) == 1.0
    assert ev.roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), same) == 0.0
    assert ev.roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), same) == 0.5
    # one positive below one negative: 3 of 4 positive/negative orderings right
    assert ev.roc_auc(np.array([0.9, 0.3, 0.4, 0.1]), same) == 0.75
    # a missing face (-inf) ranks lowest
    assert ev.roc_auc(np.array([0.9, -np.inf, 0.4, 0.1]), same) == 0.5


def test_tar_at_far():
    negatives = np.linspace(0, 0.5, 200)  # 200 negatives: 2 may be accepted at FAR 1e-2
    positives = np.array([0.49, 0.496, 0.6, 0.7])
    sim = np.concatenate([positives, negatives])
    same = np.arange(sim.size) < positives.size
    # third-highest negative = 0.5 - 2 * 0.5/199 = 0.49497...: positives strictly above it count
    assert ev.tar_at_far(sim, same, 1e-2) == 0.75
    assert ev.tar_at_far(sim, same, 0.0) == 0.5  # above every negative
    few = np.array([0.9, 0.4, 0.5, 0.3])
    assert ev.tar_at_far(few, np.array([True, True, False, False]), 1e-2) == 0.5


def test_accuracy_and_best_threshold():
    sim = np.array([0.9, 0.6, 0.45, 0.3, 0.2])
    same = np.array([True, True, False, True, False])
    assert ev.accuracy_at(sim, same, 0.5) == 0.8
    best, threshold, (lo, hi) = ev.best_threshold(sim, same, prefer=0.5)
    assert best == 0.8
    assert lo < threshold <= hi and ev.accuracy_at(sim, same, threshold) == best
    assert (lo, hi) == (0.45, 0.6)  # closest best interval to 0.5
    best, threshold, _ = ev.best_threshold(np.array([0.8, 0.2]), np.array([True, False]), prefer=0.4)
    assert best == 1.0 and threshold == pytest.approx(0.5)


def test_read_pairs_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ev.read_pairs(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\nx,y,Yes\n")
    with pytest.raises(UserError, match="need columns file_x,file_y,Decision"):
        ev.read_pairs(bad)
    bad.write_text("file_x,file_y,Decision\nx,y,Maybe\n")
    with pytest.raises(UserError, match="Decision must be Yes or No"):
        ev.read_pairs(bad)


def test_make_pairs_covers_knn_examples(tmp_path):
    out = tmp_path / "pairs.csv"
    assert make_pairs.main(["--images", str(SHARED_FACES), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 66  # 12 single-person photos, all pairs
    assert sum(r["Decision"] == "Yes" for r in rows) == 9
    assert not any("obama_and_biden" in r["file_x"] + r["file_y"] for r in rows)
    assert make_pairs.main(["--images", str(SHARED_FACES), "--out", str(out), "--extras"]) == 0
    assert len(list(csv.DictReader(out.open()))) == 105


def test_cli_end_to_end(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "file_x,file_y,Decision\n"
        "knn_examples/train/obama/obama.jpg,knn_examples/test/obama1.jpg,Yes\n"
        "knn_examples/train/biden/biden.jpg,knn_examples/train/biden/biden2.jpg,Yes\n"
        "knn_examples/train/obama/obama.jpg,knn_examples/train/biden/biden.jpg,No\n"
        "knn_examples/train/rose_leslie/img1.jpg,knn_examples/test/obama1.jpg,No\n"
    )
    code = ev.main(["--pairs", str(pairs), "--images", str(SHARED_FACES), "--show", "1"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in (
        "pairs",
        "accuracy",
        "threshold",
        "best_accuracy",
        "best_threshold",
        "auc",
        "tar_at_far_1e-2",
    ):
        assert key in result
    assert result["pairs"] == 4 and result["accuracy"] == 1.0 and result["auc"] == 1.0


def test_cli_bad_input_prints_one_error_line(tmp_path, capsys):
    code = ev.main(["--pairs", str(tmp_path / "missing.csv"), "--images", str(SHARED_FACES)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: pairs file") and err.count("\n") == 1
