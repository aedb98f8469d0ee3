import json
from pathlib import Path

import numpy as np
import pytest

from app.errors import UserError
from tests.support.shared_data import SHARED_FACES
from tests.support.testbench_scripts import load_script

REPO = Path(__file__).resolve().parents[2]
CLIP = SHARED_FACES / "short_hamilton_clip.mp4"
ENROLL = [
    "--enroll",
    f"Lin={SHARED_FACES / 'lin-manuel-miranda.png'}",
    "--enroll",
    f"Alex={SHARED_FACES / 'alex-lacamoire.png'}",
]
# The by-eye labels of the script's docstring: frames 0-19 Alex at the piano (~24 px, left) and Lin standing
# (right); 20-51 Alex in close-up; 82-210 Lin on stage; everyone else is a stranger.
HAMILTON_TRUTH = {
    "Lin": [[0, 19, 480, 0, 640, 140], [82, 210, 100, 0, 420, 220]],
    "Alex": [[0, 19, 20, 150, 110, 240], [20, 50, 360, 0, 640, 360], [51, 51, 520, 0, 640, 360]],
}


scan = load_script("scan_video_threshold")


def test_parse_thresholds_includes_stop():
    assert scan.parse_thresholds("0.36:0.56:0.02").tolist() == pytest.approx(np.arange(0.36, 0.5601, 0.02))
    assert scan.parse_thresholds("0.46:0.46:0.01").tolist() == [0.46]
    for bad in ("0.4", "a:b:c", "0.5:0.4:0.01", "0.4:0.5:0"):
        with pytest.raises(UserError):
            scan.parse_thresholds(bad)


def test_label_faces_by_region_centre(tmp_path):
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"B": [[2, 3, 0, 0, 100, 100]]}))
    frame_of = np.array([1, 2, 3, 3, 4])
    # centre inside the region in frames 2 and 3 only; the fourth face's centre (150,150) lies outside
    boxes = np.array([[10, 10, 30, 30], [10, 10, 30, 30], [80, 80, 110, 110], [140, 140, 160, 160], [10] * 4])
    assert scan.label_faces(truth, ["A", "B"], frame_of, boxes.astype(float)).tolist() == [-1, 1, 1, -1, -1]
    truth.write_text(json.dumps({"Nobody": []}))
    with pytest.raises(UserError, match="not enrolled"):
        scan.label_faces(truth, ["A"], frame_of, boxes.astype(float))
    truth.write_text("{not json")
    with pytest.raises(UserError, match="--truth"):
        scan.label_faces(truth, ["A"], frame_of, boxes.astype(float))


def _run(capsys, *extra: str) -> tuple[dict, str]:
    code = scan.main(["--video", str(CLIP), *ENROLL, "--max-frames", "40", *extra])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out.strip().splitlines()[-1]), out


@pytest.mark.slow
def test_scan_first_frames_counts_shrink_with_threshold(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # default model paths in the settings are relative to the repo root
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps(HAMILTON_TRUTH))
    result, out = _run(capsys, "--truth", str(truth))

    thresholds = result["thresholds"]
    assert thresholds == pytest.approx(np.round(np.arange(0.36, 0.5601, 0.02), 6))
    assert result["frames"] == 40
    assert result["faces"] >= 40  # Lin and the pianist are found in nearly every frame of the first shot
    assert set(result["named"]) == {"Lin", "Alex"}
    for name, counts in result["named"].items():
        assert len(counts) == len(thresholds)
        assert all(a >= b for a, b in zip(counts, counts[1:], strict=False)), (name, counts)
        assert counts[0] <= result["faces"]
        # every name is either right or wrong under the labels
        assert [t + f for t, f in zip(result["true"][name], result["false"][name], strict=True)] == counts
    assert sum(c[0] for c in result["named"].values()) <= result["faces"]
    assert result["named"]["Lin"][0] > 0 and result["named"]["Alex"][-1] == 0
    assert result["labelled"]["Lin"] >= 15 and result["labelled"]["Alex"] >= 30  # piano + close-up
    # nobody in 40 frames may be falsely named Lin, and the shipped threshold names no one falsely
    assert result["false"]["Lin"] == [0] * len(thresholds)
    shipped = thresholds.index(pytest.approx(0.46))
    assert all(result["false"][name][shipped] == 0 for name in result["named"])
    assert 0.3 < result["max_stranger_similarity"] < 0.46
    assert "threshold" in out and "Lin recall" in out

    plain, _ = _run(capsys, "--thresholds", "0.40:0.44:0.02")
    assert plain["thresholds"] == pytest.approx([0.40, 0.42, 0.44])
    assert plain["max_stranger_similarity"] is None and "true" not in plain
    assert plain["named"]["Lin"] == result["named"]["Lin"][2:5]


def test_bad_input_is_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    code = scan.main(["--video", str(tmp_path / "missing.mp4"), *ENROLL])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "missing.mp4" in err and err.count("\n") == 1
    code = scan.main(["--video", str(CLIP), "--enroll", "Lin"])
    assert code == 2 and "NAME=IMAGE" in capsys.readouterr().err
