import json
from pathlib import Path

import numpy as np
import pytest

from app.errors import UserError
from tests.support.shared_data import SHARED_FACES
from tests.support.testbench_scripts import load_script

REPO = Path(__file__).resolve().parents[2]
CLIP = SHARED_FACES / "short_hamilton_clip.mp4"
LIN, ALEX = "Lin-Manuel Miranda", "Alex Lacamoire"
ENROLL = [
    "--enroll",
    f"{LIN}={SHARED_FACES / 'lin-manuel-miranda.png'}",
    "--enroll",
    f"{ALEX}={SHARED_FACES / 'alex-lacamoire.png'}",
]


diagnose = load_script("diagnose_naming")


def test_a_face_belongs_to_the_region_holding_its_centre():
    boxes = np.array([[10, 10, 30, 30], [80, 80, 130, 130], [140, 140, 160, 160]], float)
    regions = [[0, 9, 0, 0, 100, 100]]
    assert diagnose.in_regions(boxes, regions).tolist() == [True, False, False]  # centres 20, 105, 150
    assert diagnose.in_regions(np.zeros((0, 4)), regions).tolist() == []
    truth = {"A": [[0, 9, 0, 0, 1, 1], [20, 29, 0, 0, 1, 1]]}
    assert diagnose.region_of(truth, "A", 25) == [[20, 29, 0, 0, 1, 1]]
    assert diagnose.region_of(truth, "A", 15) == []


def test_frames_are_reported_as_spans():
    assert diagnose.spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert diagnose.spans([]) == ""


def test_malformed_regions_and_frames_are_user_errors():
    for bad in ("{not json", "[1, 2]", '{"A": [[0, 1, 2]]}'):
        with pytest.raises(UserError, match="--truth-json"):
            diagnose.parse_truth(bad, "--truth-json")
    assert diagnose.parse_frames("3:9") == range(3, 9)
    with pytest.raises(UserError, match="FIRST:STOP"):
        diagnose.parse_frames("x")


def _write_tracks(path: Path, named_frames: set[int]) -> None:
    rows = [
        {"frame": f, "track": 2, "box": [524, 47, 564, 101], "name": LIN if f in named_frames else None}
        for f in range(4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_lin_on_stage_is_detected_and_an_empty_region_is_not(capsys, monkeypatch, tmp_path):
    """Frames 0-3: Lin stands on the right of the stage (~54 px face, detector score ~0.97); the bottom-left
    corner region holds no face. Lin's frames get past detection and tracking (a stage of the embedding or
    the policy), the empty region's are 'not detected'; a run's tracks file shows beside."""
    monkeypatch.chdir(REPO)  # default model paths in the settings are relative to the repo root
    tracks = tmp_path / "t.jsonl"
    _write_tracks(tracks, named_frames={2, 3})
    truth = {LIN: [[0, 19, 480, 0, 640, 140]], ALEX: [[0, 19, 0, 330, 30, 360]]}
    args = ["--video", str(CLIP), *ENROLL, "--truth-json", json.dumps(truth), "--max-frames", "4"]
    assert diagnose.main([*args, "--tracks", str(tracks)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    lin, alex = result["people"][LIN], result["people"][ALEX]
    assert lin["frames"] == 4 and alex["frames"] == 4
    assert set(lin["stages"]) <= {"weak embedding", "policy", "named"}
    assert alex["stages"] == {"not detected": 4} and alex["frames_by_stage"] == {"not detected": "0-3"}
    assert lin["pipeline_named"] == 2
    assert result["threshold"] > 0 and result["model"]
    first = next(line for line in out.splitlines() if line.split()[:1] == ["0"])
    assert " 54 " in first or " 53 " in first or " 55 " in first  # the face's height in pixels


def test_bad_input_is_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    truth = ["--truth-json", json.dumps({LIN: [[0, 1, 0, 0, 10, 10]]})]
    code = diagnose.main(["--video", str(tmp_path / "missing.mp4"), *ENROLL, *truth])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "missing.mp4" in err and err.count("\n") == 1
    code = diagnose.main(["--video", str(CLIP), *ENROLL, "--truth-json", "{oops"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --truth-json") and err.count("\n") == 1
    code = diagnose.main(["--video", str(CLIP), *ENROLL])
    assert code == 2 and "no person to diagnose" in capsys.readouterr().err
    (bad := tmp_path / "t.jsonl").write_text("not json\n")
    code = diagnose.main(["--video", str(CLIP), *ENROLL, *truth, "--tracks", str(bad)])
    assert code == 2 and "--tracks" in capsys.readouterr().err
