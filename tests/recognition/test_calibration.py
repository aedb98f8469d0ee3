import json

import numpy as np
import pytest

from app.errors import UserError
from app.recognition.calibration import (
    LabelledFaces,
    identification_report,
    split_scores,
    threshold_at_far,
    trade_off,
)
from testbench import calibrate, eval_identification
from tests.support.shared_data import SHARED_IDENTITIES


def clustered(people: int, photos: int, spread: float, seed: int = 0) -> LabelledFaces:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors, names = [], []
    for p in range(people):
        for _ in range(photos):
            vectors.append(centres[p] + rng.normal(scale=spread, size=16))
            names.append(f"set/p{p}")
    return LabelledFaces(np.asarray(vectors, np.float32), names, [None] * len(names))


def test_well_separated_people_are_all_identified_and_no_stranger_accepted():
    scores = split_scores(clustered(10, 4, 0.02), k=1, splits=5, seed=0, metric="cosine")
    report = identification_report(scores, threshold=0.8, k=1)
    assert report.identified == 1.0 and report.strangers_accepted == 0.0 and report.rank1 == 1.0
    # Half enrolled with 1 photo (3 probes each), half strangers (4 probes each).
    assert report.genuine_probes == 5 * 3 and report.stranger_probes == 5 * 4


def test_threshold_at_far_accepts_at_most_that_share_of_strangers():
    strangers = np.linspace(0.0, 0.99, 100)
    t = threshold_at_far(strangers, 0.05)
    assert np.mean(strangers >= t) == 0.05
    assert np.mean(strangers >= np.nextafter(t, -1)) > 0.05 or t == strangers[94]


def test_more_enrolled_photos_give_strangers_more_chances():
    faces = clustered(12, 5, 0.6)
    one = split_scores(faces, k=1, splits=10, seed=1, metric="cosine")
    three = split_scores(faces, k=3, splits=10, seed=1, metric="cosine")
    t = 0.3
    assert trade_off(three, [t])[0].strangers_accepted >= trade_off(one, [t])[0].strangers_accepted


def test_too_few_people_is_a_user_error():
    with pytest.raises(UserError, match="more than 3 photos"):
        split_scores(clustered(3, 3, 0.1), k=3, splits=2, seed=0, metric="cosine")


def test_eval_identification_on_a_real_set_prints_the_issue_keys_last(capsys):
    assert eval_identification.main(["--images", str(SHARED_IDENTITIES / "johns"), "--splits", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("identified", "strangers_accepted", "threshold", "identified_at_far_1e-2",
                "identified_at_far_1e-3", "rank1", "enroll", "people", "probes"):  # fmt: skip
        assert key in line
    assert line["people"] == 5 and line["enroll"] == 1 and line["identified"] > 0.9


def test_calibrate_recommends_a_threshold_within_the_stranger_target(capsys):
    args = ["--images", str(SHARED_IDENTITIES / "johns"), "--splits", "3", "--far", "0.05"]
    assert calibrate.main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["strangers_accepted_k1"] <= 0.05 and line["strangers_accepted_k3"] <= 0.05
    assert line["threshold"] >= max(line["threshold_at_far_k1"], line["threshold_at_far_k3"])


def test_a_missing_photo_folder_is_one_error_line(tmp_path, capsys):
    assert eval_identification.main(["--images", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: photo folder") and "--images" in err[0]


def test_probes_replace_only_the_probe_side_and_faceless_probes_are_left_out():
    faces = clustered(10, 4, 0.05)
    same = split_scores(faces, k=1, splits=5, seed=0, metric="cosine", probes=faces.vectors)
    plain = split_scores(faces, k=1, splits=5, seed=0, metric="cosine")
    assert np.array_equal(same.genuine_best, plain.genuine_best)
    assert np.array_equal(same.stranger_best, plain.stranger_best)
    probes = faces.vectors.copy()
    probes[::2] = np.nan  # half the photos: no face found when drawn small
    half = split_scores(faces, k=1, splits=5, seed=0, metric="cosine", probes=probes)
    assert half.genuine_best.size < plain.genuine_best.size
    assert half.stranger_best.size < plain.stranger_best.size
    assert np.isfinite(half.genuine_best).all() and np.isfinite(half.stranger_best).all()


def test_probes_drawn_small_score_lower_against_their_full_size_enrolment(capsys):
    # The real detector and dlib model on the johns photos drawn at the centre of a 720p frame (DET_SIZE 640).
    args = ["--images", str(SHARED_IDENTITIES / "johns"), "--splits", "3", "--probe-face-px", "30", "80"]
    assert eval_identification.main(args) == 0
    full, small, large = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-3:])
    assert (full["face_px"], small["face_px"], large["face_px"]) == ("full", 30.0, 80.0)
    assert full["detected"] == 1.0 and large["detected"] >= 0.9 > small["detected"]
    assert small["genuine_median"] < large["genuine_median"] <= full["genuine_median"] + 0.02
    assert large["identified"] >= 0.9 and large["strangers_accepted"] <= 0.05
