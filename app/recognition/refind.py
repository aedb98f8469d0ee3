"""Small tracked faces the frame's detector missed, found again on an enlarged crop where they just were.

At `DET_SIZE=640` a 720p frame is halved and a 30-50 px face is a 15-25 px one for the detector, which then
finds it on some frames and not on others: the track goes lost for those frames and its face is neither
shown nor named there (most of the enrolled face-frames the hard tracking scenario loses are such misses).
The face is known to be near where its track was on the last frame, so for each small face (shorter than
`REFINE_BELOW`) tracked on the last frame that none of this frame's detections covers, the landmark
refiner's crop detector (app/vision/landmark_refine.py: 2x the box, enlarged to 192 px) looks there; a face
of the track's size near the crop's centre is added to the frame's detections. Its score is capped below
the tracker's weak-start threshold, so it can only continue the track it was found for (ByteTrack's second
association), never start one. Cost: one 192x192 detector call per missed small face.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.tracking.config import TrackerConfig
from app.tracking.matching import box_iou
from app.vision.landmark_refine import LandmarkRefiner
from app.vision.pixel_format import FramePixels

# A tracked face overlapped this much by one of the frame's detections was not missed.
COVERED_IOU = 0.3


def score_cap(config: TrackerConfig) -> float:
    """The highest score a found-again face may carry: under the score that starts a track (the weak start,
    or with weak starts off the new-track threshold), so it only continues one; above low_thresh, so it is
    associated at all."""
    starts = config.weak_start_thresh or config.high_thresh + config.new_track_margin
    return max(config.low_thresh + 1e-3, starts - 0.01)


def refind_missed(
    refiner: LandmarkRefiner,
    frame: np.ndarray | FramePixels,
    tracked: Sequence[np.ndarray],
    boxes: np.ndarray,
    scores: np.ndarray,
    landmarks: np.ndarray,
    score_cap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The frame's detections (boxes (N,4), scores (N,), landmarks (N,5,2)) plus the small faces of
    `tracked` (boxes of the tracks on the last frame) that none of them covers, found again on a crop;
    and how many were added. Added scores are at most `score_cap`."""
    expected = np.asarray(tracked, np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes).reshape(-1, 4)
    if not len(expected):
        return boxes, scores, landmarks, 0
    want = refiner.wants(expected)
    if len(boxes) and want.any():
        want &= box_iou(expected, boxes).max(axis=1) < COVERED_IOU
    if not want.any():
        return boxes, scores, landmarks, 0
    found = [f for f in refiner.find_again(frame, expected[want]) if f is not None]
    if not found:
        return boxes, scores, landmarks, 0
    more_boxes = np.array([f[0] for f in found], boxes.dtype if len(boxes) else np.float32)
    more_scores = np.minimum(np.array([f[1] for f in found]), score_cap)
    more_landmarks = np.array([f[2] for f in found], np.float32)
    return (
        np.concatenate([boxes, more_boxes.astype(boxes.dtype)]),
        np.concatenate([np.asarray(scores).reshape(-1), more_scores.astype(np.asarray(scores).dtype)]),
        np.concatenate([np.asarray(landmarks, np.float32).reshape(-1, 5, 2), more_landmarks]),
        len(found),
    )
