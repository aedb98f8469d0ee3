"""Who is on each track: embed few faces, vote over a track's life, name only on agreeing evidence.

Per-frame API for the recognition stage (call both, once per frame, also on frames without tracks):

    manager = TrackIdentities(IdentityConfig(), threshold=spec.threshold, metric=spec.metric)

    tracks = tracker.update(dets.boxes, dets.scores, dets.landmarks)        # ByteTracker output
    need = manager.select_for_embedding(tracks, frame_bgr)                # track ids to embed now
    by_id = {t.track_id: t for t in tracks}
    vectors = analyzer.embed(frame_bgr, np.stack([by_id[i].landmarks for i in need]),
                             boxes=np.stack([by_id[i].box for i in need]))  # if need
    found = gallery.search(manager.query_vectors(need, vectors), k=2)     # the tracks' templates
    labels = manager.update(
        tracks,
        embeddings=dict(zip(need, vectors)),
        matches=dict(zip(need, found)),
    )                                                                     # {track_id: TrackLabel}
    manager.counters.embeddings                                           # faces embedded so far
    manager.reset()                                                       # new video / tracker.reset()

`threshold` is in similarity units (higher = more alike: cosine similarity, or 1 - Euclidean distance),
the same units as `Match.similarity`; `metric` ("cosine" | "euclidean") says how two embeddings of this
model compare, for re-linking tracks and for aggregating a track's embeddings.

What happens inside:
- When to embed (`select_for_embedding`): when a track first shows up (confirmed by the tracker); every
  `pending_interval` frames while it is undecided (up to `max_pending_embeddings`) or while its latest
  vote contradicts its label (as many again); again when the face is clearly better (quality above the
  best embedded one times `better_quality_ratio`); when it comes back after being gone; after it crossed
  another face (once the boxes no longer overlap, since the tracker may have swapped them); and otherwise
  every `refresh_interval` frames (`unknown_refresh_interval` for a track still pending or decided
  unknown, since an early poor view of an enrolled person must not stick). Faces smaller than
  `min_face_size`, overlapping another track, or cut by the frame edge (less than `min_inside` of the box
  inside) are not embedded.
  Quality (app.recognition.quality) = size term (box height / `reference_face_size`) x frontal term (nose
  offset from the eye-mouth midline, from the landmarks) x sharpness term (Laplacian variance of a 64 px
  grey crop / `reference_sharpness`) x detector-score term x the fraction inside the frame, each in 0..1.
  While a track is pending or unknown it is embedded every `pending_interval` frames for up to
  `max_pending_embeddings` embeddings.
- Templates (`query_vectors`): what is searched in the gallery is the track's template, the quality-weighted
  mean of its kept embeddings with the new one folded in: averaging a track's views scores the right
  person well above single frames (Lin-Manuel on the hamilton clip: frames 0.38-0.53, template 0.52-0.59).
  A new embedding unlike the template (similarity below `threshold`: another face, e.g. after a swap at a
  crossing or a scene cut) restarts it, and for a pending or unknown track drops its votes; a named track
  keeps its template through one odd view and restarts only on a second odd view of the same face.
  Searching the raw vectors still works: each embedding then votes on its own.
- Votes (`update`): each embedding votes for the best gallery match if its similarity reaches `threshold`,
  else for "unknown". A vote weighs its face quality (app.recognition.quality) times its strength (weaker
  just above or just below threshold, full at `confidence_band` away); a match within `match_margin` of a
  different person abstains, and so does a face that overlaps another track by `cross_iou` when its
  embedding arrives. Older votes fade by `vote_decay` per new embedding. A track stays "pending" until one
  label has `min_evidence` weight and leads the runner-up (another person or unknown) by `decision_margin`,
  or at once when one embedding of quality >= `fast_quality` scores >= threshold + `fast_margin` (a large
  frontal face well above threshold) or one of any quality scores >= threshold + `sure_margin`, `sure_lead`
  ahead of anyone else (matched that well, even a small face is its person; a template of n views needs
  both over sqrt(n), as its score has about 1/sqrt(n) of one view's noise), or when `steady_votes`
  embeddings in a row, whatever their quality, match the same person by threshold + `fast_margin` (a small
  face seen steadily: its votes weigh too little ever to reach `min_evidence`), or when `consistent_votes`
  in a row match the same person above threshold, by threshold + `consistent_margin` on average, each
  `consistent_lead` ahead of anyone else (a template settled just above threshold: such votes fade before
  they add up). An "unknown" track is named
  on the same margins and runs (a first naming); a given name changes only when another label leads it by
  `switch_margin` (hysteresis). Below threshold is "unknown", never the nearest enrolled person.
- Memory: a track that disappears keeps its record for `relink_window` frames. If the tracker re-finds it
  under the same id, its label is still there (short occlusions). If a new track's first embedding is
  within `threshold + relink_margin` of a vanished track's aggregate embedding (quality-weighted mean,
  unit-normalised for cosine models) and clearly closer than to any other vanished track, the new track
  inherits its votes and label, and `TrackLabel.linked_id` names the earlier track (the id to show, so a
  person who walks out and back in keeps their number). The margin is large on purpose: re-linking means
  "the same face seen moments ago", not merely "the same person" (that is the gallery's job).
- Doubt: a decided track that stands (IoU >= `takeover_iou`) where a track seen on the last frame has just
  vanished may hold another face: when one face walks behind another the tracker can hand the front face
  to the hidden one's track for a frame or two. Its label reads "pending" until an embedding agrees with
  its template (embedded at once, when not overlapping another track); two that do not (the same other
  face) restart it, its name included, and its votes start over. A track restarted that way is in doubt
  again when it comes back after a gap (the tracker may give it back its first face).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from app.gallery.base import Match
from app.inference.spec import METRICS, normalize_for, rowwise_similarity
from app.recognition import quality as face_quality
from app.recognition.identity_config import IdentityConfig
from app.tracking.matching import box_iou

log = logging.getLogger(__name__)

Status = Literal["pending", "known", "unknown"]


class TrackView(Protocol):
    """What the manager reads from a track (app.tracking.track.Track has it)."""

    track_id: int
    landmarks: np.ndarray | None

    @property
    def box(self) -> np.ndarray: ...


# Not frozen: a frozen dataclass sets each field through object.__setattr__ (2.2 -> 0.8 us a label, one per
# track per frame); the manager makes a new one on every call, nobody holds on to it to change it.
@dataclass(slots=True)
class TrackLabel:
    track_id: int
    name: str | None  # set only when status == "known"
    similarity: float | None  # mean similarity of the votes behind the label (latest one while pending)
    status: Status
    linked_id: int | None = None  # the earlier track this one continues (re-linked by face); show this id


VoteKind = Literal["none", "below", "abstain", "name"]


@dataclass(frozen=True)
class TrackEvidence:
    """Why a track has the label it has, for diagnostics: how often it was embedded and what its latest
    embedding said ("below": under threshold, "abstain": two people equally close, "name": a person)."""

    embedded: int  # embeddings behind the track's current votes (0: its face was never embedded)
    last_vote: VoteKind  # "none" until the first embedding
    restarted: int  # times its template and undecided votes were dropped for another face


@dataclass
class IdentityCounters:
    embeddings: int = 0  # faces embedded (vectors received by update)
    tracks: int = 0  # distinct tracks seen
    named: int = 0  # times a track was given a person's name
    relinks: int = 0  # new tracks that inherited a vanished track's identity
    label_changes: int = 0  # given labels later changed to another one


@dataclass(eq=False)
class _Record:
    track_id: int
    first_seen: int
    last_seen: int
    status: Status = "pending"
    name: str | None = None
    votes: dict[str | None, float] = field(default_factory=dict)  # None = unknown
    similarity_sum: dict[str | None, float] = field(default_factory=dict)
    similarity_weight: dict[str | None, float] = field(default_factory=dict)
    last_similarity: float | None = None
    embeddings: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (quality, vector)
    embedded: int = 0
    quick_left: int = 0  # embeddings left at pending_interval (undecided or contested tracks)
    last_embed: int = -(10**9)
    best_quality: float = 0.0
    overlapped: bool = False
    contested: bool = False  # the latest vote disagreed with the given label: look again soon
    linked_from: int | None = None
    odd_vector: np.ndarray | None = None  # latest embedding unlike the template of a named track
    last_vote: VoteKind = "none"
    restarted: int = 0
    box: np.ndarray | None = None  # the face box on the frame it was last seen
    # Its face may have changed: it now stands where a track seen on the last frame vanished (the tracker
    # may have given it that face), or it was restarted that way and comes back after a gap (the tracker
    # may hand it its own face again). Its label is withheld until an embedding agrees with its template;
    # two that do not (the same other face) restart it, name included.
    in_doubt: bool = False
    taken_over: bool = False  # restarted in doubt: the face it holds is not the one it began with
    steady_label: str | None = None  # the person the latest run of matches above threshold names
    # ... and that run's (similarity, lead over the next person) per embedding, oldest first
    steady_run: list[tuple[float, float]] = field(default_factory=list)


# The quality terms' detector floor (a QualityConfig default): read once, not made per frame.
_DETECTOR_FLOOR = face_quality.QualityConfig().detector_floor


def _max_other_overlap(boxes: np.ndarray) -> np.ndarray:
    """(N,) each box's largest IoU with another of the (N, 4) boxes (0 for a single box).

    np.fill_diagonal and ndarray.max, written as their strided assignment and ufunc reduction (the same
    values, without the Python-level wrappers: every frame of every camera)."""
    overlap = box_iou(boxes, boxes)
    overlap.reshape(-1)[:: overlap.shape[1] + 1] = 0.0
    result: np.ndarray = np.maximum.reduce(overlap, axis=1)
    return result


def _face_box(track: TrackView) -> np.ndarray:
    """The detector's box when the track has one (the face as seen), else the Kalman box."""
    box = getattr(track, "detection_box", None)
    return np.asarray(track.box if box is None else box, dtype=np.float64)


class TrackIdentities:
    """Names for tracks from sparse embeddings and gallery matches; see the module docstring."""

    def __init__(self, config: IdentityConfig | None, threshold: float, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.config = config or IdentityConfig()
        self.threshold = float(threshold)
        self.metric = metric
        self.reset()

    def reset(self) -> None:
        """Forget every track, vote and counter (call together with the tracker's reset)."""
        self._frame = 0
        self._records: dict[int, _Record] = {}
        self._selected_quality: dict[int, float] = {}
        self._doubts_checked = 0  # the frame whose take-overs were last looked for
        self.counters = IdentityCounters()

    # -- selection -------------------------------------------------------------------------------------

    def select_for_embedding(
        self, tracks: Sequence[TrackView], frame_bgr: face_quality.Frame | None
    ) -> list[int]:
        """Ids of the tracks whose face should be embedded on this frame (before `update` of this frame)."""
        cfg = self.config
        frame = self._frame + 1
        self._selected_quality = {}
        self._check_takeovers(tracks, frame)
        usable = [t for t in tracks if t.landmarks is not None]
        if not usable:
            return []
        # np.array of equal-shaped rows: np.stack's array at a third of its cost (every frame, every face).
        boxes = np.array([_face_box(t) for t in usable])
        max_overlap = _max_other_overlap(boxes)
        landmarks = np.array([t.landmarks for t in usable if t.landmarks is not None])
        geometric = face_quality.geometric(boxes, landmarks, cfg.reference_face_size)
        inside = (
            np.ones(len(usable))
            if frame_bgr is None
            else face_quality.inside_fraction(boxes, frame_bgr.shape[:2])
        )
        scores = np.array([float(getattr(t, "score", 1.0)) for t in usable])
        detector = face_quality.detector_term(scores, _DETECTOR_FLOOR)
        geometric *= inside * face_quality.detector_weight(detector)
        # The per-track loop reads Python floats (the same doubles): numpy scalars cost ~10x more per use.
        overlaps, heights = max_overlap.tolist(), (boxes[:, 3] - boxes[:, 1]).tolist()
        insides, geometrics = inside.tolist(), geometric.tolist()
        selected = []
        records = self._records
        for i, track in enumerate(usable):
            record = records.get(track.track_id) or self._record(track.track_id, frame)
            if overlaps[i] >= cfg.cross_iou:
                record.overlapped = True  # two faces on one spot: the tracker may swap them; check later
                continue
            if heights[i] < cfg.min_face_size or insides[i] < cfg.min_inside:
                continue
            since = frame - record.last_embed
            must = (
                record.embedded == 0
                or record.in_doubt
                or record.last_seen < frame - 1  # back after being gone
                or (record.overlapped and overlaps[i] < cfg.clear_iou)
                or since
                >= (cfg.refresh_interval if record.status == "known" else cfg.unknown_refresh_interval)
                or (
                    (record.status != "known" or record.contested)
                    and record.quick_left > 0
                    and since >= cfg.pending_interval
                )
            )
            better = (
                since >= cfg.min_embed_gap and geometrics[i] > record.best_quality * cfg.better_quality_ratio
            )
            if not (must or better):
                continue
            quality = geometrics[i]
            if frame_bgr is not None:
                sharp = face_quality.sharpness_term(frame_bgr, boxes[i], cfg.reference_sharpness)
                quality = quality * face_quality.sharpness_weight(sharp)
            if not must and quality <= record.best_quality * cfg.better_quality_ratio:
                continue  # larger and more frontal, but blurred: not worth an embedding
            self._selected_quality[track.track_id] = float(quality)
            selected.append(track.track_id)
        return selected

    def selected_quality(self, track_id: int) -> float | None:
        """The quality of a face picked by the last `select_for_embedding` (None if it was not picked)."""
        return self._selected_quality.get(track_id)

    def template_parts(self, track_id: int) -> list[tuple[float, np.ndarray]]:
        """The (quality, vector) embeddings a track's template is made of, for `template_query` in another
        process (an embedding worker that searches the gallery); empty for an unknown track."""
        record = self._records.get(track_id)
        return [] if record is None else list(record.embeddings)

    def query_vectors(self, track_ids: Sequence[int], vectors: np.ndarray) -> np.ndarray:
        """What to search the gallery with for these new embeddings: each track's template with it folded in.

        The template is the quality-weighted mean of the track's kept embeddings plus the new one; a new
        embedding unlike the template (another person after a swap at a crossing) starts a fresh template, so
        the query is the vector itself. Call between `select_for_embedding` and `update` of the same frame;
        searching the raw vectors instead still works (each embedding then votes on its own).
        """
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(track_ids), -1)
        out = vectors.copy()
        for row, track_id in enumerate(track_ids):
            record = self._records.get(track_id)
            if record is None:
                continue
            quality = self._selected_quality.get(track_id, 0.5)
            template, _ = self._template_with(record, vectors[row], quality)
            out[row] = template
        return out

    # -- update ----------------------------------------------------------------------------------------

    def update(
        self,
        tracks: Sequence[TrackView],
        embeddings: Mapping[int, np.ndarray],
        matches: Mapping[int, Sequence[Match]],
        qualities: Mapping[int, float] | None = None,
    ) -> dict[int, TrackLabel]:
        """Take this frame's embeddings and gallery matches (keyed by track id); return a label per track.

        Embeddings may come back frames after their selection (an asynchronous embedder): `qualities`
        then carries each face's quality as `selected_quality` gave it on the frame it was picked."""
        self._frame += 1
        frame = self._frame
        self._check_takeovers(tracks, frame)
        present: dict[int, _Record] = {}
        records = self._records
        for track in tracks:
            # (The record is normally there already: _check_takeovers made it, no call per track.)
            record = records.get(track.track_id) or self._record(track.track_id, frame)
            record.last_seen = frame
            record.box = _face_box(track)
            present[track.track_id] = record
        crossing = self._overlapping(tracks, embeddings)
        for track_id, vector in embeddings.items():
            record = present.get(track_id) or self._record(track_id, frame)
            quality = self._selected_quality.pop(track_id, None)
            if qualities is not None and track_id in qualities:
                quality = qualities[track_id]
            if track_id in crossing:  # the face now overlaps another: which face was embedded is unsure
                self.counters.embeddings += 1
                record.overlapped = True
                continue
            if quality is None:  # embedded without being selected: judge it by geometry alone
                embedded = next((t for t in tracks if t.track_id == track_id), None)
                quality = self._geometric(embedded) if embedded is not None else 0.5
            self.counters.embeddings += 1
            self._add_embedding(record, np.asarray(vector, dtype=np.float32).ravel(), quality,
                                list(matches.get(track_id, ())), frame)  # fmt: skip
        self._selected_quality = {}
        self._forget(frame)
        return {track_id: self._label(record) for track_id, record in present.items()}

    def label(self, track_id: int) -> TrackLabel | None:
        """The current label of a track, also while it is gone (None once forgotten)."""
        record = self._records.get(track_id)
        return None if record is None else self._label(record)

    def evidence(self, track_id: int) -> TrackEvidence | None:
        """What the track's label rests on (None once forgotten): for diagnostics, not for decisions."""
        record = self._records.get(track_id)
        if record is None:
            return None
        return TrackEvidence(record.embedded, record.last_vote, record.restarted)

    def aggregate_embedding(self, track_id: int) -> np.ndarray | None:
        """Quality-weighted mean of the track's kept embeddings (unit length for cosine models)."""
        record = self._records.get(track_id)
        return None if record is None or not record.embeddings else self._aggregate(record)

    # -- internals -------------------------------------------------------------------------------------

    def _record(self, track_id: int, frame: int) -> _Record:
        record = self._records.get(track_id)
        if record is None:
            record = _Record(
                track_id=track_id,
                first_seen=frame,
                last_seen=frame - 1,
                quick_left=self.config.max_pending_embeddings,
            )
            self._records[track_id] = record
            self.counters.tracks += 1
        return record

    def _check_takeovers(self, tracks: Sequence[TrackView], frame: int) -> None:
        """Put in doubt the decided tracks whose face may not be the one their label is about: standing
        (IoU >= takeover_iou) where a track seen on the last frame has just vanished (a face walking behind
        another: the tracker may hand the front face to the hidden one's track), or back after a gap once
        taken over that way."""
        if self._doubts_checked == frame:
            return
        self._doubts_checked = frame
        if not tracks:
            return
        records = [self._record(t.track_id, frame) for t in tracks]
        present = {t.track_id for t in tracks}
        vanished = [
            r.box
            for r in self._records.values()
            if r.last_seen == frame - 1 and r.box is not None and r.track_id not in present
        ]
        covers = [False] * len(tracks)  # (Python bools: nothing vanished on most frames)
        if vanished:
            iou = box_iou(np.array([_face_box(t) for t in tracks]), np.array(vanished))
            covers = (np.maximum.reduce(iou, axis=1) >= self.config.takeover_iou).tolist()
        for record, cover in zip(records, covers, strict=True):
            refound = record.taken_over and record.last_seen < frame - 1
            if record.status != "pending" and (cover or refound):
                record.in_doubt = True

    def _overlapping(self, tracks: Sequence[TrackView], embeddings: Mapping[int, np.ndarray]) -> set[int]:
        """Ids of embedded tracks whose face overlaps another track's by cross_iou or more right now."""
        if len(tracks) < 2 or not embeddings:
            return set()
        hit = _max_other_overlap(np.array([_face_box(t) for t in tracks])) >= self.config.cross_iou
        return {t.track_id for t, h in zip(tracks, hit, strict=True) if h and t.track_id in embeddings}

    def _template_with(self, record: _Record, vector: np.ndarray, quality: float) -> tuple[np.ndarray, bool]:
        """(template including `vector`, whether `vector` agrees with the track's template so far)."""
        return template_with(record.embeddings, vector, quality, self.threshold, self.metric,
                             self.config.quality_floor)  # fmt: skip

    def _geometric(self, track: TrackView) -> float:
        if track.landmarks is None:
            return 0.5
        box, landmarks = _face_box(track)[None], track.landmarks[None]
        return float(face_quality.geometric(box, landmarks, self.config.reference_face_size)[0])

    def _normalise(self, vectors: np.ndarray) -> np.ndarray:
        return normalize_for(vectors, self.metric)

    def _aggregate(self, record: _Record, extra: tuple[float, np.ndarray] | None = None) -> np.ndarray:
        kept = record.embeddings if extra is None else [*record.embeddings, extra]
        return _aggregate(kept, self.metric, self.config.quality_floor)

    def _similarity(self, vector: np.ndarray, others: np.ndarray) -> np.ndarray:
        return _similarity(vector, others, self.metric)

    def _vote(self, matches: list[Match], quality: float) -> tuple[str | None, float | None, float]:
        """(label, similarity, weight) of one embedding; label None = unknown."""
        cfg = self.config
        weight = max(quality, cfg.quality_floor)
        if not matches:
            return None, None, weight  # empty gallery: nobody to be
        ranked = sorted(matches, key=lambda m: m.similarity, reverse=True)
        best = ranked[0]
        if best.similarity < self.threshold:
            # Just below threshold is weak evidence of a stranger, as just above is weak evidence of a name.
            below = (self.threshold - best.similarity) / max(cfg.confidence_band, 1e-9)
            strength = float(np.clip(cfg.min_vote_strength + (1.0 - cfg.min_vote_strength) * below, 0.0, 1.0))
            return None, float(best.similarity), weight * strength
        rival = next((m for m in ranked[1:] if m.name != best.name), None)
        if rival is not None and best.similarity - rival.similarity < cfg.match_margin:
            return best.name, float(best.similarity), 0.0  # two people equally close: no evidence
        lead = (best.similarity - self.threshold) / max(cfg.confidence_band, 1e-9)
        strength = float(np.clip(cfg.min_vote_strength + (1.0 - cfg.min_vote_strength) * lead, 0.0, 1.0))
        return best.name, float(best.similarity), weight * strength

    def _add_embedding(
        self, record: _Record, vector: np.ndarray, quality: float, matches: list[Match], frame: int
    ) -> None:
        cfg = self.config
        record.embedded += 1
        record.quick_left = max(record.quick_left - 1, 0)
        record.last_embed = frame
        record.best_quality = max(record.best_quality, quality)
        record.overlapped = False
        consistent = template_agrees(record.embeddings, vector, self.threshold, self.metric,
                                     self.config.quality_floor)  # fmt: skip
        # Views in the template the gallery was searched with (query_vectors: the kept ones and this one).
        views = len(record.embeddings) + 1 if consistent else 1
        keep = True  # whether this vector joins the template
        if consistent:
            record.odd_vector = None
            record.in_doubt = False
        elif record.status == "known" and (
            record.odd_vector is None or self._similarity(vector, record.odd_vector[None])[0] < self.threshold
        ):
            # One odd view of a named track (half hidden at a crossing, turned): keep the template, look
            # again soon; only a second odd view of the same face restarts it.
            record.odd_vector = vector
            record.contested = True
            record.quick_left = cfg.max_pending_embeddings
            keep = False
        else:  # not the face the template was built from: start over
            record.embeddings = []
            record.odd_vector = None
            record.quick_left = cfg.max_pending_embeddings
            record.restarted += 1
            record.steady_label, record.steady_run = None, []
            if record.status == "known" and not record.in_doubt:
                record.contested = True  # a given name changes only on strong evidence (hysteresis)
            else:  # nothing to keep: the evidence so far was about another face
                record.taken_over = record.in_doubt
                record.in_doubt = record.contested = False
                record.status, record.name = "pending", None
                record.votes.clear()
                record.similarity_sum.clear()
                record.similarity_weight.clear()
        label, similarity, weight = self._vote(matches, quality)
        record.last_vote = "abstain" if weight == 0 else "below" if label is None else "name"
        if (
            record.status == "pending"
            and record.linked_from is None
            and record.embedded <= cfg.relink_attempts
        ):
            self._try_relink(record, vector, label)
        if keep:
            record.embeddings.append((quality, vector))
        self._trim_embeddings(record)
        for key in record.votes:
            record.votes[key] *= cfg.vote_decay
        record.last_similarity = similarity
        if record.status != "pending" and weight > 0:
            was_contested = record.contested
            record.contested = label != (record.name if record.status == "known" else None)
            if record.contested and not was_contested:
                record.quick_left = cfg.max_pending_embeddings
        if weight > 0:
            record.votes[label] = record.votes.get(label, 0.0) + weight
            if similarity is not None:
                record.similarity_sum[label] = record.similarity_sum.get(label, 0.0) + weight * similarity
                record.similarity_weight[label] = record.similarity_weight.get(label, 0.0) + weight
        strong = (
            label is not None
            and weight > 0
            and similarity is not None
            and quality >= cfg.fast_quality
            and similarity >= self.threshold + cfg.fast_margin
        )
        if strong and record.status == "pending":
            self._give(record, label)  # a large frontal face well above threshold: no need to wait
            return
        # A template of n agreeing views scores with about 1/sqrt(n) of one view's noise: it is as sure at
        # sure_margin / sqrt(n) above threshold, sure_lead / sqrt(n) ahead of anyone (n = 1: one view).
        scale = 1.0 / np.sqrt(views)
        sure = (
            label is not None
            and weight > 0
            and similarity is not None
            and similarity >= self.threshold + cfg.sure_margin * scale
            and _lead(matches) >= cfg.sure_lead * scale
        )
        if sure and record.status != "known":
            self._give(record, label)  # matched far above threshold, far ahead of anyone: whatever its size
            return
        if label is not None and weight > 0 and similarity is not None:
            if record.steady_label != label:
                record.steady_label, record.steady_run = label, []
            record.steady_run.append((similarity, _lead(matches)))
            del record.steady_run[: -max(cfg.steady_votes, cfg.consistent_votes)]
        else:
            record.steady_label, record.steady_run = None, []
        if record.status != "known" and self._steady(record):
            self._give(record, record.steady_label)  # one person matched again and again: no need to wait
            return
        self._decide(record)

    def _steady(self, record: _Record) -> bool:
        """Whether the latest embeddings in a row all name one person: `steady_votes` of them by threshold +
        fast_margin (a small face seen steadily: its votes weigh too little ever to reach min_evidence), or
        `consistent_votes` above threshold, by threshold + consistent_margin on average, each with
        consistent_lead over anyone else (a track's template settled just above threshold: votes that weak
        fade before they add up; one view a little lower does not start the run over)."""
        cfg = self.config

        def trailing(ok: Callable[[float, float], bool]) -> int:
            count = 0
            for similarity, lead in reversed(record.steady_run):
                if not ok(similarity, lead):
                    break
                count += 1
            return count

        strong = trailing(lambda s, _: s >= self.threshold + cfg.fast_margin)
        if strong >= cfg.steady_votes:
            return True
        if cfg.consistent_votes == 0:
            return False
        lead = cfg.consistent_lead
        if trailing(lambda s, d: s >= self.threshold and d >= lead) < cfg.consistent_votes:
            return False
        run = [similarity for similarity, _ in record.steady_run[-cfg.consistent_votes :]]
        return sum(run) / len(run) >= self.threshold + cfg.consistent_margin

    def _trim_embeddings(self, record: _Record) -> None:
        while len(record.embeddings) > self.config.max_embeddings:
            # Drop the poorest view; among equals the oldest (min() returns the first).
            poorest = min(range(len(record.embeddings)), key=lambda i: record.embeddings[i][0])
            record.embeddings.pop(poorest)

    def _decide(self, record: _Record) -> None:
        cfg = self.config
        if not record.votes:
            return
        ranked = sorted(record.votes.items(), key=lambda item: item[1], reverse=True)
        best_label, best_weight = ranked[0]
        if best_weight < cfg.min_evidence:
            return
        if record.status == "pending" or (record.status == "unknown" and best_label is not None):
            # Naming an "unknown" track is a first naming, not a flip: the same margin as from pending.
            runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
            if best_weight - runner_up >= cfg.decision_margin:
                self._give(record, best_label)
            return
        current = record.name if record.status == "known" else None
        if best_label != current and best_weight - record.votes.get(current, 0.0) >= cfg.switch_margin:
            self.counters.label_changes += 1
            log.debug("track %d: %s -> %s", record.track_id, current, best_label)
            self._give(record, best_label)

    def _give(self, record: _Record, label: str | None) -> None:
        record.name = label
        record.status = "known" if label is not None else "unknown"
        if label is not None:
            self.counters.named += 1

    def _try_relink(self, record: _Record, vector: np.ndarray, label: str | None) -> None:
        """Give a new track the identity of a vanished one when their faces are clearly the same person."""
        cfg = self.config
        candidates = [
            r
            for r in self._records.values()
            if r is not record and r.embeddings and r.last_seen < record.first_seen
        ]
        if not candidates:
            return
        similarity = self._similarity(vector, np.stack([self._aggregate(r) for r in candidates]))
        order = np.argsort(-similarity)
        best = candidates[order[0]]
        if similarity[order[0]] < self.threshold + cfg.relink_margin:
            return
        if len(order) > 1 and similarity[order[0]] - similarity[order[1]] < cfg.match_margin:
            return
        if label is not None and best.status == "known" and best.name != label:
            return  # the gallery says this face is someone else
        # Merge: the vanished track's evidence plus what this one gathered so far; its label carries over.
        for mine, theirs in (
            (record.votes, best.votes),
            (record.similarity_sum, best.similarity_sum),
            (record.similarity_weight, best.similarity_weight),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0.0) + value
        record.status, record.name = best.status, best.name
        record.embeddings = best.embeddings + record.embeddings
        self._trim_embeddings(record)
        record.best_quality = max(record.best_quality, best.best_quality)
        record.linked_from = best.linked_from if best.linked_from is not None else best.track_id
        del self._records[best.track_id]
        self.counters.relinks += 1
        log.debug("track %d re-linked to vanished track %d", record.track_id, best.track_id)

    def _forget(self, frame: int) -> None:
        stale = [i for i, r in self._records.items() if frame - r.last_seen > self.config.relink_window]
        for track_id in stale:
            del self._records[track_id]

    def _label(self, record: _Record) -> TrackLabel:
        if record.status == "pending" or record.in_doubt:
            return TrackLabel(record.track_id, None, record.last_similarity, "pending", record.linked_from)
        key = record.name
        weight = record.similarity_weight.get(key, 0.0)
        similarity = record.similarity_sum[key] / weight if weight > 0 else record.last_similarity
        return TrackLabel(record.track_id, key, similarity, record.status, record.linked_from)


def _lead(matches: Sequence[Match]) -> float:
    """How far the best match is ahead of the best match of another person (1.0 when there is none)."""
    ranked = sorted(matches, key=lambda m: m.similarity, reverse=True)
    if not ranked:
        return 0.0
    rival = next((m for m in ranked[1:] if m.name != ranked[0].name), None)
    return 1.0 if rival is None else float(ranked[0].similarity - rival.similarity)


# -- template arithmetic, pure: also run by the embedding worker, which searches the gallery ---------------


def _aggregate(kept: Sequence[tuple[float, np.ndarray]], metric: str, quality_floor: float) -> np.ndarray:
    weights, weighted = _weighted([q for q, _ in kept], np.stack([v for _, v in kept]), metric, quality_floor)
    template: np.ndarray = _means(weights, weighted, [(0, len(kept))], metric)[0]
    return template


def _weighted(
    qualities: Sequence[float] | np.ndarray, vectors: np.ndarray, metric: str, quality_floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """(weights, weight x vector as the metric compares it) of a template's rows."""
    weights = np.maximum(np.asarray(qualities, np.float64), quality_floor)
    return weights, weights[:, None] * normalize_for(vectors, metric)


def _means(
    weights: np.ndarray, weighted: np.ndarray, spans: Sequence[tuple[int, int]], metric: str
) -> np.ndarray:
    """The template of each [start, end) span of rows: the weighted mean, as the metric compares vectors.
    Each span is summed on its own (numpy sums 8 or more values pairwise, so one sum over padded rows
    would round differently); the divisions and normalisations run on all spans at once."""
    add = np.add.reduce  # what ndarray.sum runs, without its Python wrapper (called twice per template)
    sums = np.array([add(weighted[a:b], axis=0) for a, b in spans])
    totals = np.array([add(weights[a:b]) for a, b in spans])
    return normalize_for(sums / totals[:, None], metric)


def _similarity(vector: np.ndarray, others: np.ndarray, metric: str) -> np.ndarray:
    return rowwise_similarity(others, vector[None, :], metric)


def template_with(
    kept: Sequence[tuple[float, np.ndarray]],
    vector: np.ndarray,
    quality: float,
    threshold: float,
    metric: str,
    quality_floor: float,
) -> tuple[np.ndarray, bool]:
    """(the template a track with `kept` (quality, vector) embeddings has with `vector` folded in, whether
    `vector` agrees with the template so far); an unlike vector is its own query (a fresh template)."""
    if not kept:
        return vector, True
    parts = (np.array([q for q, _ in kept], np.float64), np.stack([v for _, v in kept]))
    templates, agree = templates_with([parts], vector[None], [quality], threshold, metric, quality_floor)
    return (templates[0], True) if agree[0] else (vector, False)


def template_agrees(
    kept: Sequence[tuple[float, np.ndarray]], vector: np.ndarray, threshold: float, metric: str,
    quality_floor: float,
) -> bool:  # fmt: skip
    """Whether `vector` agrees with the template of the `kept` (quality, vector) embeddings: what
    `template_with` says as its second value, by the same operations on the same rows (every row is
    normalised and weighted on its own, the kept span summed as there), without making the template that
    `vector` would join (the identity policy's update asks only this)."""
    if not kept:
        return True
    weights, weighted = _weighted(
        np.array([q for q, _ in kept], np.float64), np.stack([v for _, v in kept]), metric, quality_floor
    )
    similar = rowwise_similarity(_means(weights, weighted, [(0, len(kept))], metric), vector[None], metric)
    return not bool(similar[0] < threshold)


def templates_with(
    kept: Sequence[tuple[np.ndarray, np.ndarray] | None],
    vectors: np.ndarray,
    qualities: Sequence[float],
    threshold: float,
    metric: str,
    quality_floor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`template_with` of many tracks at once: row i's kept embeddings as ((n,) qualities, (n, dim) vectors)
    or None (no template yet), its new embedding `vectors[i]` and that one's quality -> ((N, dim) float32
    templates, (N,) whether each new embedding agrees). One normalisation, one weighting and one similarity
    for every row: the shared embedding worker folds a whole batch's embeddings into their templates."""
    out = np.array(vectors, np.float32)
    agree = np.ones(len(out), bool)
    known = [(i, parts) for i, parts in enumerate(kept) if parts is not None and len(parts[0])]
    if not known:
        return out, agree
    # Each track's kept rows followed by its new one: the template without and with it are two spans.
    stacked: list[np.ndarray] = []
    marks: list[np.ndarray | list[float]] = []
    spans_kept, spans_all, start = [], [], 0
    for i, (qualities_i, vectors_i) in known:
        stacked += [vectors_i, vectors[i][None]]
        marks += [qualities_i, [qualities[i]]]
        end = start + len(qualities_i)
        spans_kept.append((start, end))
        spans_all.append((start, end + 1))
        start = end + 1
    rows = [i for i, _ in known]
    weights, weighted = _weighted(np.concatenate(marks), np.concatenate(stacked), metric, quality_floor)
    similar = rowwise_similarity(_means(weights, weighted, spans_kept, metric), vectors[rows], metric)
    joins = ~(similar < threshold)  # as template_with always asked: below threshold is unlike
    agree[rows] = joins
    if joins.any():
        chosen = [span for span, join in zip(spans_all, joins.tolist(), strict=True) if join]
        out[np.asarray(rows)[joins]] = _means(weights, weighted, chosen, metric)
    return out, agree
