"""ByteTrack for faces: associate every detection box, low-score ones included, by IoU and a Kalman filter.

Per frame (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box", ECCV 2022):
1. Predict all live tracks with the Kalman filter (one batched call).
2. First association: detections with score >= high_thresh against confirmed tracked + lost tracks,
   cost 1 - IoU * score, Hungarian (lap.lapjv), gate match_thresh. A matched lost track is re-found
   under its old id.
3. Second association: detections with low_thresh < score < high_thresh against the tracked tracks left
   over from step 2 and those lost at most low_refind_frames ago (not in ByteTrack: a small face's score
   flickers between nothing and 0.1-0.3), cost 1 - IoU, gate second_match_thresh (0.5). Tracked tracks
   still unmatched become lost. This is what keeps a face through blur, a head turn or a partial
   occlusion, when its score dips.
4. Unconfirmed tracks against the high-score detections left over from step 2, gate
   unconfirmed_match_thresh (0.7); tracks started from a weak box (step 5) also against the low-score
   detections step 3 left. A track is confirmed (gets an id) on its second matched frame in a row, one
   started weakly on its weak_confirm_hits-th; an unconfirmed track missed once is removed.
5. Leftover high-score detections with score >= high_thresh + new_track_margin start new tracks; leftover
   detections from weak_start_thresh up (0.4), away from every track, start weak ones (not in ByteTrack:
   small faces score 0.1-0.6 their whole walk and would never get a track).
6. Lost tracks older than track_buffer * fps / 30 frames are removed; a tracked track that duplicates a
   lost one (1 - IoU < 0.15) is resolved in favour of the older of the two.

Usage (recognition stage, once per frame, with the frame's `Detections` from post-processing; pass every
detection above `low_thresh` -- filtering at the display threshold first would throw away step 3):

    tracker = ByteTracker(TrackerConfig.from_settings(settings), frame_rate=source_fps)
    tracks = tracker.update(dets.boxes, dets.scores, dets.landmarks)  # confirmed tracks on this frame
    for track in tracks: track.track_id, track.box, track.landmarks, track.detection_index
"""

from __future__ import annotations

import logging

import numpy as np

from app.tracking.config import TrackerConfig
from app.tracking.kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah
from app.tracking.matching import fuse_score, iou_distance, linear_assignment
from app.tracking.track import LOST, NEW, REMOVED, TRACKED, Track

log = logging.getLogger(__name__)


def _boxes(tracks: list[Track]) -> np.ndarray:
    """Kalman boxes of `tracks` as (N, 4) x1, y1, x2, y2, converted in one call."""
    if not tracks:
        return np.zeros((0, 4))
    return xyah_to_xyxy(np.array([t.mean[:4] for t in tracks]))


def _associate(
    track_boxes: np.ndarray,
    detections: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray | None,
    thresh: float,
    rows: int | None = None,
) -> tuple[list[tuple[int, int]], list[int], np.ndarray]:
    """One gated association of track boxes (rows) with the detections `detections` (indices into `boxes`):
    (row, detection index) pairs, the unmatched rows, the unmatched detection indices. Cost 1 - IoU, times
    the detection score when `scores` is given (ByteTrack's fusion). `rows` is the track count when
    `track_boxes` was left empty because there is nothing to match against.

    An empty side (no low-score box, no unconfirmed track: most frames) needs no cost matrix and no
    assignment call: everything on the other side is left over."""
    count = track_boxes.shape[0] if rows is None else rows
    if count == 0 or detections.size == 0:
        return [], list(range(count)), detections
    cost = iou_distance(track_boxes, boxes[detections])
    if scores is not None:
        cost = fuse_score(cost, scores[detections])
    found = linear_assignment(cost, thresh)
    picked = detections.tolist()
    pairs = [(r, picked[c]) for r, c in found.matches.tolist()]
    return pairs, found.unmatched_rows.tolist(), detections[found.unmatched_cols]


class ByteTracker:
    """Multi-face tracker. Ids are unique per instance and start again at 1 after reset()."""

    def __init__(self, config: TrackerConfig | None = None, frame_rate: float = 30.0) -> None:
        self.config = config or TrackerConfig()
        self.frame_rate = float(frame_rate)
        self.max_time_lost = self.config.max_time_lost(self.frame_rate)
        self.kalman = KalmanBoxFilter()
        self.reset()

    def reset(self) -> None:
        """Forget all tracks; the next frame is frame 1 and the next id is 1."""
        self.frame_id = 0
        self._next_id = 1
        self._tracked: list[Track] = []  # TRACKED and NEW (unconfirmed)
        self._lost: list[Track] = []
        self._predicted: tuple[np.ndarray, np.ndarray] | None = None  # this frame's predicted states
        self._predicted_rows: dict[int, int] = {}  # id(track) -> its row in them

    @property
    def tracked_tracks(self) -> list[Track]:
        return list(self._tracked)

    @property
    def lost_tracks(self) -> list[Track]:
        return list(self._lost)

    def _new_id(self) -> int:
        track_id = self._next_id
        self._next_id += 1
        return track_id

    def _predict(self, tracks: list[Track]) -> np.ndarray:
        """Predict `tracks` one frame ahead; their predicted boxes (N, 4), in one conversion (the first
        three associations all compare predicted boxes: a subset's rows are the same values). The stacked
        states stay for `_apply_matches` (its tracks' states are rows of them)."""
        self._predicted_rows = {id(t): i for i, t in enumerate(tracks)}
        if not tracks:
            self._predicted = None
            return np.zeros((0, 4))
        # np.array of the equal-shaped rows is np.stack's copy at a third of its cost (no per-item checks).
        means = np.array([t.mean for t in tracks], dtype=np.float64)
        covs = np.array([t.covariance for t in tracks], dtype=np.float64)
        # A track that was not seen on the last frame should not keep growing or shrinking (ByteTrack).
        not_tracked = [i for i, t in enumerate(tracks) if t.state != TRACKED]
        if not_tracked:
            means[not_tracked, 7] = 0.0
        means, covs = self.kalman.predict(means, covs)
        for track, mean, cov in zip(tracks, means, covs, strict=True):
            track.mean, track.covariance = mean, cov
        self._predicted = means, covs
        return xyah_to_xyxy(means[:, :4])

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None = None
    ) -> list[Track]:
        """Advance one frame with its detections (x1,y1,x2,y2 boxes (N,4), scores (N,), landmarks (N,5,2)).

        Returns the confirmed tracks matched on this frame; each carries the box, score and landmarks of
        its detection and `detection_index` into the inputs.
        """
        cfg = self.config
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
        if landmarks is not None:
            landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
            if landmarks.shape[0] != boxes.shape[0]:
                raise ValueError(f"{boxes.shape[0]} boxes but {landmarks.shape[0]} landmark sets")
        self.frame_id += 1
        frame = self.frame_id

        for track in self._tracked + self._lost:
            track.detection_index = -1
        high = (scores >= cfg.high_thresh).nonzero()[0]  # (np.flatnonzero's indices, without its wrappers)
        low = ((scores > cfg.low_thresh) & (scores < cfg.high_thresh)).nonzero()[0]

        confirmed = [t for t in self._tracked if t.is_confirmed]
        unconfirmed = [t for t in self._tracked if not t.is_confirmed]
        pool = confirmed + self._lost
        predicted = self._predict(pool + unconfirmed)  # rows: pool, then unconfirmed

        matched: list[tuple[Track, int]] = []

        # Stage 1: high-score detections vs tracked + lost.
        pairs, left_rows, high_left = _associate(
            predicted[: len(pool)], high, boxes, scores if cfg.fuse_score else None, cfg.match_thresh
        )
        matched += [(pool[r], d) for r, d in pairs]
        remaining = [r for r in left_rows if pool[r].state == TRACKED]
        # ... and the tracks lost a moment ago: a small face's score flickers between nothing and 0.1-0.3.
        refind = [
            r
            for r in left_rows
            if pool[r].state == LOST and frame - pool[r].frame_id <= cfg.low_refind_frames
        ]

        # Stage 2: low-score detections vs the tracked tracks left over; no score fusion (scores are low).
        extend_rows = remaining + refind
        extend = [pool[r] for r in extend_rows]
        extend_boxes = predicted[extend_rows] if extend_rows and low.size else predicted[:0]
        pairs, second_rows, low_left = _associate(
            extend_boxes, low, boxes, None, cfg.second_match_thresh, rows=len(extend_rows)
        )
        matched += [(extend[r], d) for r, d in pairs]
        newly_lost = [extend[r] for r in second_rows if extend[r].state == TRACKED]

        # Stage 3: unconfirmed tracks vs leftover high-score detections.
        pairs, third_rows, high_left = _associate(
            predicted[len(pool) :],
            high_left,
            boxes,
            scores if cfg.fuse_score else None,
            cfg.unconfirmed_match_thresh,
        )
        matched += [(unconfirmed[r], d) for r, d in pairs]
        waiting = [unconfirmed[r] for r in third_rows]
        # ... and tracks started from a weak box vs the low-score detections no tracked track took.
        weak = [t for t in waiting if t.weak_start]
        if weak and low_left.size:
            pairs, _, low_left = _associate(_boxes(weak), low_left, boxes, None, cfg.unconfirmed_match_thresh)
            matched += [(weak[r], d) for r, d in pairs]
            taken = {id(weak[r]) for r, _ in pairs}
            waiting = [t for t in waiting if id(t) not in taken]
        for track in waiting:
            track.mark_removed()

        self._apply_matches(matched, boxes, scores, landmarks, frame)
        for track in newly_lost:
            track.mark_lost()

        # Stage 4: new tracks; weak ones from leftover boxes under new_track_thresh, away from every track.
        # (Nothing left over is the usual frame: every face already has its track.)
        starters = high_left[scores[high_left] >= cfg.new_track_thresh] if high_left.size else high_left
        new_tracks = self._start_tracks(starters, boxes, scores, landmarks, frame)
        if cfg.weak_confirm_hits and frame > 1 and (high_left.size or low_left.size):
            candidates = np.concatenate([high_left[scores[high_left] < cfg.new_track_thresh], low_left])
            candidates = candidates[scores[candidates] >= cfg.weak_start_thresh]
            present = [t for t in self._tracked + new_tracks if t.state != REMOVED]
            if candidates.size and present:
                nearest = iou_distance(_boxes(present), boxes[candidates]).min(axis=0)
                candidates = candidates[nearest > 1.0 - cfg.weak_start_iou]
            weak_tracks = self._start_tracks(candidates, boxes, scores, landmarks, frame)
            for track in weak_tracks:
                track.weak_start, track.hits_to_confirm = True, max(cfg.weak_confirm_hits, 2)
            new_tracks += weak_tracks

        # Stage 5: book-keeping.
        for track in self._lost:
            if track.state == LOST and frame - track.frame_id > self.max_time_lost:
                track.mark_removed()
        everyone = self._tracked + self._lost + new_tracks
        self._tracked = [t for t in everyone if t.state in (TRACKED, NEW)]
        self._lost = [t for t in everyone if t.state == LOST]
        self._remove_duplicates()
        return [t for t in self._tracked if t.is_active]

    def _apply_matches(
        self,
        matched: list[tuple[Track, int]],
        boxes: np.ndarray,
        scores: np.ndarray,
        landmarks: np.ndarray | None,
        frame: int,
    ) -> None:
        if not matched:
            return
        tracks = [t for t, _ in matched]
        indices = [d for _, d in matched]
        # Every matched track was predicted on this frame: its state is a row of the stacked prediction.
        assert self._predicted is not None
        rows = [self._predicted_rows[id(t)] for t in tracks]
        means, covs = self._predicted[0][rows], self._predicted[1][rows]
        matched_boxes = boxes[indices]
        means, covs = self.kalman.update(means, covs, xyxy_to_xyah(matched_boxes))
        matched_scores = scores[indices].tolist()
        # Gathered copies (fancy indexing): each track owns its rows, no per-track copy.
        matched_landmarks = None if landmarks is None else landmarks[indices]
        for i, track in enumerate(tracks):
            track.mark_matched(
                frame, means[i], covs[i], matched_boxes[i], matched_scores[i],
                None if matched_landmarks is None else matched_landmarks[i], indices[i], owned=True,
            )  # fmt: skip
            if not track.is_confirmed and track.hits >= track.hits_to_confirm:
                track.confirm(self._new_id())

    def _start_tracks(
        self,
        indices: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        landmarks: np.ndarray | None,
        frame: int,
    ) -> list[Track]:
        if indices.size == 0:
            return []
        means, covs = self.kalman.initiate(xyxy_to_xyah(boxes[indices]))
        tracks = []
        for i, d in enumerate(indices):
            track = Track(
                mean=means[i],
                covariance=covs[i],
                score=float(scores[d]),
                detection_box=boxes[d].copy(),
                landmarks=None if landmarks is None else landmarks[d].copy(),
                start_frame=frame,
                frame_id=frame,
                detection_index=int(d),
            )
            if frame == 1:  # ByteTrack trusts the very first frame: nothing to confirm against
                track.state = TRACKED
                track.confirm(self._new_id())
            tracks.append(track)
        return tracks

    def _remove_duplicates(self) -> None:
        """A tracked and a lost track on the same spot are one face: keep the one followed longer."""
        if not self._tracked or not self._lost:
            return
        close = np.argwhere(
            iou_distance(_boxes(self._tracked), _boxes(self._lost)) < self.config.duplicate_iou_distance
        )
        for i, j in close:
            tracked, lost = self._tracked[i], self._lost[j]
            if tracked.state == REMOVED or lost.state == REMOVED:
                continue
            if tracked.frame_id - tracked.start_frame > lost.frame_id - lost.start_frame:
                lost.mark_removed()
            else:
                tracked.mark_removed()
        self._tracked = [t for t in self._tracked if t.state != REMOVED]
        self._lost = [t for t in self._lost if t.state != REMOVED]
