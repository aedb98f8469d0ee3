import numpy as np
import pytest

from app.tracking.kalman import KalmanBoxFilter, xyxy_to_xyah
from app.tracking.track import Track, TrackState

BOX = np.array([100.0, 100.0, 140.0, 150.0])


def _new_track(frame: int = 1) -> Track:
    mean, cov = KalmanBoxFilter().initiate(xyxy_to_xyah(BOX[None]))
    return Track(
        mean[0], cov[0], 0.9, BOX.copy(), np.zeros((5, 2), np.float32), start_frame=frame, frame_id=frame
    )


def _match(track: Track, frame: int, landmarks=None) -> None:
    track.mark_matched(frame, track.mean, track.covariance, BOX, 0.8, landmarks, detection_index=3)


def test_new_track_is_confirmed_on_its_second_match_and_only_then_has_an_id():
    track = _new_track()
    assert track.state == TrackState.NEW and not track.is_active and track.track_id == 0
    _match(track, 2)
    assert track.state == TrackState.TRACKED and not track.is_confirmed
    track.confirm(7)
    assert track.is_active and track.track_id == 7 and track.tracklet_len == 1
    with pytest.raises(ValueError):
        track.confirm(8)


def test_lost_track_is_refound_with_its_id_and_a_fresh_tracklet():
    track = _new_track()
    _match(track, 2)
    track.confirm(1)
    _match(track, 3)
    assert track.tracklet_len == 2
    track.mark_lost()
    assert track.state == TrackState.LOST and not track.is_active and track.detection_index == -1
    landmarks = np.arange(10, dtype=np.float32).reshape(5, 2)
    _match(track, 9, landmarks)
    assert track.state == TrackState.TRACKED and track.is_active and track.track_id == 1
    assert track.refound_frame == 9 and track.tracklet_len == 0 and track.frame_id == 9
    np.testing.assert_array_equal(track.landmarks, landmarks)  # landmarks travel with the track
    assert track.detection_index == 3 and track.score == pytest.approx(0.8)


def test_removed_is_final():
    track = _new_track()
    track.mark_removed()
    with pytest.raises(ValueError):
        _match(track, 2)
    with pytest.raises(ValueError):
        track.mark_lost()


def test_box_is_the_kalman_estimate():
    track = _new_track()
    np.testing.assert_allclose(track.box, BOX)
