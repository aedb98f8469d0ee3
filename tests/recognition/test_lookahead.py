"""Name look-ahead: held frames' pending rows take the name their track holds now, and nothing else moves."""

from __future__ import annotations

import numpy as np
import pytest

from app.recognition.identity import TrackLabel
from app.recognition.lookahead import NameLookahead


def pending(track: int) -> TrackLabel:
    return TrackLabel(track, None, None, "pending")


def known(track: int, name: str = "Ada", similarity: float = 0.5) -> TrackLabel:
    return TrackLabel(track, name, similarity, "known")


def unknown(track: int) -> TrackLabel:
    return TrackLabel(track, None, 0.3, "unknown")


class Frame:
    """A payload: one label per row, as the frame showed it."""

    def __init__(self, index: int, labels: list[TrackLabel]) -> None:
        self.index = index
        self.rows = list(labels)


def fill(frame: Frame, row: int, label: TrackLabel) -> None:
    frame.rows[row] = label


def run(frames: int, sequence: list[list[TrackLabel]]) -> list[Frame]:
    ahead = NameLookahead(frames, fill)
    out = []
    for i, labels in enumerate(sequence):
        out += ahead.push(
            Frame(i, labels), [lab.track_id for lab in labels], {lab.track_id: lab for lab in labels}
        )
        assert len(ahead) == min(i + 1, frames)
    return out + ahead.drain()


def statuses(out: list[Frame]) -> list[list[str]]:
    return [[lab.status for lab in f.rows] for f in out]


def test_frames_come_out_in_order_and_delayed_by_the_window():
    ahead = NameLookahead(2, fill)
    released = [ahead.push(Frame(i, []), [], {}) for i in range(4)]
    assert [[f.index for f in r] for r in released] == [[], [], [0], [1]]
    assert [f.index for f in ahead.drain()] == [2, 3] and len(ahead) == 0


def test_zero_frames_passes_each_frame_through_unchanged():
    out = run(0, [[pending(1)], [known(1)]])
    assert statuses(out) == [["pending"], ["known"]]


def test_a_name_decided_within_the_window_fills_the_tracks_pending_frames():
    seq = [[pending(1), pending(2)]] * 5 + [[known(1, "Ada", 0.61), pending(2)]]
    out = run(4, seq)
    # Track 1's 4 frames before it was named on frame 5 were still held; frame 0 had gone on.
    assert [f.rows[0].name for f in out] == [None, "Ada", "Ada", "Ada", "Ada", "Ada"]
    assert out[1].rows[0].similarity == 0.61
    assert all(f.rows[1].status == "pending" for f in out)  # another track's rows are its own


def test_decided_labels_are_never_changed():
    seq = [[unknown(1), known(2, "Bo")], [known(1, "Ada"), known(2, "Cy")]]
    out = run(4, seq)
    assert [lab.status for lab in out[0].rows] == ["unknown", "known"]
    assert out[0].rows[1].name == "Bo"  # a name on a held frame stays what that frame said


def test_a_track_whose_latest_label_is_not_a_name_fills_nothing():
    # Named, then in doubt (pending) and restarted: its held pending frames must not take the old name.
    seq = [[known(1)], [pending(1)], [pending(1)], [unknown(1)]]
    out = run(4, seq)
    assert statuses(out) == [["known"], ["pending"], ["pending"], ["unknown"]]


def test_a_named_track_in_doubt_is_not_filled_when_its_name_comes_back():
    # Named, then pending (in doubt: the tracker may have handed it another face), then named again.
    seq = [[pending(1)], [known(1)], [pending(1)], [pending(1)], [known(1)]]
    out = run(8, seq)
    assert statuses(out) == [["known"], ["known"], ["pending"], ["pending"], ["known"]]


def test_a_name_changed_within_the_window_fills_nothing():
    # Pending, named Alice, then taken over as Bob: the first views are not given the later name.
    seq = [[pending(1)]] * 3 + [[known(1, "Alice")]] * 2 + [[known(1, "Bob")]] * 2
    out = run(8, seq)
    assert [f.rows[0].name for f in out] == [None, None, None, "Alice", "Alice", "Bob", "Bob"]


def test_rows_overlapping_another_face_are_not_filled():
    ahead = NameLookahead(4, fill)
    apart = np.array([[0, 0, 10, 10], [50, 0, 60, 10]], np.float32)
    crossing = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)  # IoU 0.43
    frames = [Frame(i, [pending(1), pending(2)]) for i in range(3)]
    for frame, boxes in zip(frames, (apart, crossing, apart), strict=True):
        ahead.push(frame, [1, 2], {1: frame.rows[0], 2: frame.rows[1]}, boxes)
    ahead.push(Frame(3, [known(1), known(2)]), [1, 2], {1: known(1), 2: known(2)}, apart)
    out = ahead.drain()
    assert statuses(out[:3]) == [["known", "known"], ["pending", "pending"], ["known", "known"]]


def test_a_name_on_a_track_that_left_still_fills_its_held_frames():
    seq = [[pending(7)], [known(7)], [], []]
    out = run(3, seq)
    assert statuses(out) == [["known"], ["known"], [], []]


def test_a_negative_window_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        NameLookahead(-1, fill)
