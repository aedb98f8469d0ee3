"""Tracking and per-track identity on generated sequences with ground truth, against a reference ByteTrack.

    .venv/bin/python testbench/eval_tracking.py                     # standard + strangers scenarios, seed 0
    .venv/bin/python testbench/eval_tracking.py --scenario standard --seeds 0 1 2
    .venv/bin/python testbench/eval_tracking.py --scenario crowd --seconds 10
    .venv/bin/python testbench/eval_tracking.py --video data/demo/demo.mp4   # a written video + its .gt.json

Per frame: RetinaFace (every box above the tracker's low threshold, as ByteTrack wants) -> our ByteTracker ->
TrackIdentities (embed the selected faces with the dlib model, search a temporary Qdrant-edge gallery of the
demo enrolment photos, k=2). The same detections also feed the reference tracker (`sv.ByteTrack` from
supervision, or its successor `trackers.ByteTrackTracker` where supervision no longer ships it), with the same
identity layer on top, so the comparison isolates association.

Sequences: "standard" is the demo video (obama twice, biden crossing in front of him; both enrolled);
"strangers" is the same script plus three unenrolled people from the shared test faces walking behind;
"crowd" (opt-in) is the benchmark script: 10 faces from those photos at 1080p, passing in front of each
other (photos repeat, so the same person can be on screen twice).
Ground-truth faces less than `--min-visible` visible are "don't care": they are not counted, and tracks on
them are neither false positives nor misses. Boxes compared are the trackers' matched detection boxes.

Printed: MOTA, IDF1, ID switches (motmetrics, IoU >= 0.5), identity accuracy per frame (a visible face counts
as correct when its track shows the right name, or "unknown" for an unenrolled person), frames to the first
correct name per appearance, unknowns named as known, flips of enrolled people's names, embeddings per
detection (faces embedded / faces detected above the display threshold), and where the enrolled face-frames
not named are lost (`enrolled_lost`, the first cause that applies, LOSS_CAUSES: not detected (of which under
60 px), detected without a track, wrong name, decided unknown, never embedded, undecided with the latest
embedding below threshold / abstaining / naming someone). The last line is JSON with the
totals over all sequences: mota, idf1, id_switches, identity_accuracy, unknown_named_as_known,
embeddings_per_detection, plus the per-sequence and reference-tracker details.

The labels are scored as the pipeline shows a file: with the name look-ahead (`--lookahead`, default
`NAME_LOOKAHEAD`, app/recognition/lookahead.py), a track named within that many frames is named on its
earlier pending frames too. `causal` holds the naming figures without it (what a live camera shows).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import cv2
import motmetrics as mm
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import load_settings  # noqa: E402
from app.demo import (  # noqa: E402
    GroundTruthFace,
    bench_scenario,
    demo_sets,
    hard_scenario,
    load_ground_truth,
    load_sprites,
    render,
    standard_scenario,
)
from app.errors import UserError  # noqa: E402
from app.gallery.factory import open_gallery  # noqa: E402
from app.recognition.analyzer import FaceAnalyzer  # noqa: E402
from app.recognition.identity import TrackEvidence, TrackIdentities, TrackLabel  # noqa: E402
from app.recognition.identity_config import IdentityConfig  # noqa: E402
from app.recognition.lookahead import NameLookahead  # noqa: E402
from app.recognition.refind import refind_missed, score_cap  # noqa: E402
from app.tracking import ByteTracker, TrackerConfig  # noqa: E402
from app.tracking.matching import box_iou, linear_assignment  # noqa: E402

SHARED_FACES = REPO.parent / "shared" / "data" / "faces"
IDENTITIES = REPO.parent / "shared" / "data" / "identities"
HARD_SETS = ("bbt", "johns", "human", "walking-dead")  # people with 4+ photos: enrolled with 1 or 3
LOOKALIKES = "families"  # one member of a family enrolled, the relatives walk by as strangers
STRANGERS = ("alex_lacamoire", "kit_harington", "rose_leslie")  # in the shared test faces, never enrolled
MATCH_IOU = 0.5
SMALL_FACE = 60.0  # px face-box height under which a missed face counts as small (the detector's weak spot)
# Where an enrolled face-frame that is not named correctly is lost, first cause that applies:
LOSS_CAUSES = (
    "not_detected",  # no detection box (any score) overlaps the face at IoU >= 0.5
    "detected_no_track",  # detected, but no confirmed track on it (score too low to start one, first frame)
    "wrong_name",  # a track on it shows another person's name
    "decided_unknown",  # its track's votes settled on "unknown" (embeddings below threshold)
    "not_embedded",  # its track's face was never embedded (gated: small, overlapping, at the edge)
    "pending_below_threshold",  # undecided, the latest embedding scored below threshold
    "pending_abstained",  # undecided, the latest match was as close to a second person (match_margin)
    "pending_waiting_votes",  # undecided, the latest embedding named someone: waiting for enough votes
)


@dataclass
class TrackOut:
    """One tracker's output for one face, whichever tracker made it."""

    track_id: int
    box: np.ndarray  # the matched detection's box
    landmarks: np.ndarray | None
    detection_box: np.ndarray | None = None


@dataclass
class Sequence:
    name: str
    fps: float
    frames: Iterator[tuple[np.ndarray, list[GroundTruthFace]]]
    n_frames: int
    enroll: dict[str, list[Path]] | None = None  # who is enrolled, from which photos; None = the demo's


@dataclass
class RunState:
    """A tracker with its identity layer and the per-frame log the metrics are computed from."""

    name: str
    tracker: object
    identities: TrackIdentities
    log: list[tuple[list[GroundTruthFace], list[TrackOut], dict[int, TrackLabel]]] = field(
        default_factory=list
    )
    seconds: float = 0.0  # tracker update time
    detections: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # boxes, scores per frame
    evidence: list[dict[int, TrackEvidence | None]] = field(default_factory=list)  # per frame, by track id


class ReferenceByteTrack:
    """supervision's ByteTrack (or its successor in `trackers`) behind our update() shape."""

    def __init__(self, config: TrackerConfig, fps: float) -> None:
        import supervision as sv

        self.sv = sv
        if hasattr(sv, "ByteTrack"):
            self.kind = f"supervision {sv.__version__} sv.ByteTrack"
            self.tracker = sv.ByteTrack(
                track_activation_threshold=config.new_track_thresh,
                lost_track_buffer=config.track_buffer,
                minimum_matching_threshold=config.match_thresh,
                frame_rate=int(round(fps)),
            )
            self._update = self.tracker.update_with_detections
        else:
            import trackers

            self.kind = f"trackers {metadata.version('trackers')} ByteTrackTracker"
            self.tracker = trackers.ByteTrackTracker(
                lost_track_buffer=config.track_buffer,
                frame_rate=fps,
                track_activation_threshold=config.new_track_thresh,
                high_conf_det_threshold=config.high_thresh,
            )
            self._update = self.tracker.update

    def update(self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> list[TrackOut]:
        detections = self.sv.Detections(
            xyxy=boxes.astype(np.float32).reshape(-1, 4),
            confidence=scores.astype(np.float32),
            class_id=np.zeros(len(scores), dtype=int),
            data={"index": np.arange(len(scores))},
        )
        result = self._update(detections)
        out = []
        for i in range(len(result)):
            track_id = int(result.tracker_id[i])
            if track_id < 0:
                continue
            index = int(result.data["index"][i])
            out.append(TrackOut(track_id, boxes[index].copy(), landmarks[index].copy()))
        return out


def ours_update(tracker: ByteTracker, boxes, scores, landmarks) -> list[TrackOut]:
    return [
        TrackOut(t.track_id, t.detection_box.copy(), t.landmarks, t.detection_box)
        for t in tracker.update(boxes, scores, landmarks)
    ]


# -- sequences -------------------------------------------------------------------------------------------


def scenario_images(kind: str) -> dict[str, list[Path]]:
    images = dict(demo_sets().video)
    if kind == "strangers":
        for name in STRANGERS:
            folder = SHARED_FACES / "knn_examples" / "train" / name
            photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not photos:
                raise UserError(f"no photos in {folder}; the shared test faces are incomplete")
            images[name] = photos[:1]
    return images


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def hard_cast(seed: int) -> tuple[dict[str, list[Path]], list[tuple[str, Path]]]:
    """(enrolment photos per person, video actors) for the hard scenario, drawn from the identity sets.

    8 people of HARD_SETS enrolled (4 with 1 photo, 4 with 3), each shown by a photo not enrolled; 2
    families with one member enrolled from 1 photo and shown by another, and 2 relatives of each shown
    as strangers; 3 more strangers from HARD_SETS. Person names are "<set>/<folder>".
    """
    if not IDENTITIES.is_dir():
        raise UserError(f"identity photo sets missing in {IDENTITIES}; the shared test data is incomplete")
    rng = np.random.default_rng(seed)
    people = [
        (f"{s}/{p.name}", _photos(p))
        for s in HARD_SETS
        for p in sorted((IDENTITIES / s).iterdir())
        if p.is_dir() and len(_photos(p)) >= 4
    ]
    order = rng.permutation(len(people))
    enroll: dict[str, list[Path]] = {}
    actors: list[tuple[str, Path]] = []
    for rank, index in enumerate(order[:11]):
        name, photos = people[index]
        photos = [photos[i] for i in rng.permutation(len(photos))]
        if rank < 8:
            k = 1 if rank < 4 else 3
            enroll[name] = photos[:k]
            actors.append((name, photos[k]))
        else:
            actors.append((name, photos[0]))  # a stranger
    families: dict[str, list[tuple[str, list[Path]]]] = {}
    for p in sorted((IDENTITIES / LOOKALIKES).iterdir()):
        if p.is_dir() and _photos(p):
            families.setdefault(p.name.split("-")[0], []).append((f"{LOOKALIKES}/{p.name}", _photos(p)))
    picked = [f for f in sorted(families) if any(len(ph) >= 2 for _, ph in families[f])]
    for family in [picked[i] for i in rng.permutation(len(picked))[:2]]:
        members = families[family]
        known = next(i for i in rng.permutation(len(members)) if len(members[i][1]) >= 2)
        name, photos = members[known]
        enroll[name] = photos[:1]
        actors.append((name, photos[1]))
        relatives = [m for i, m in enumerate(members) if i != known]
        actors += [(n, ph[0]) for n, ph in relatives[:2]]
    order = rng.permutation(len(actors))
    return enroll, [actors[i] for i in order]


def generated(kind: str, seed: int, seconds: float, fps: float) -> Sequence:
    if kind == "hard":
        enroll, cast = hard_cast(seed)
        scenario = hard_scenario(cast, fps=fps, seconds=max(seconds, 20.0), seed=seed)
        sprites = load_sprites(scenario)
        frames = render(scenario, sprites=sprites)
        return Sequence(f"hard-seed{seed}", fps, frames, scenario.n_frames, enroll)
    if kind == "crowd":
        scenario = bench_scenario(scenario_images("strangers"), fps=fps, seconds=seconds, seed=seed)
    else:
        scenario = standard_scenario(scenario_images(kind), fps=fps, seconds=seconds, seed=seed)
    sprites = load_sprites(scenario)
    return Sequence(f"{kind}-seed{seed}", fps, render(scenario, sprites=sprites), scenario.n_frames)


def from_video(path: Path) -> Sequence:
    truth = load_ground_truth(path)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"cannot open video {path}")

    def frames() -> Iterator[tuple[np.ndarray, list[GroundTruthFace]]]:
        for faces in truth.frames:
            ok, frame = capture.read()
            if not ok:
                break
            yield frame, list(faces)
        capture.release()

    return Sequence(path.stem, truth.fps, frames(), truth.n_frames)


# -- running ---------------------------------------------------------------------------------------------


def enrol(
    analyzer: FaceAnalyzer, gallery, photos: dict[str, list[Path]] | None = None, min_score: float = 0.0
) -> set[str]:
    """min_score: the display threshold. The analyzer keeps boxes down to the tracker's low threshold, and at
    DET_SIZE 1280 obama.jpg's largest box is then a 0.22 non-face."""
    photos = demo_sets().enroll if photos is None else photos
    for name, paths in photos.items():
        vectors = []
        for path in paths:
            image = cv2.imread(str(path))
            dets = analyzer.detect_photo(image)
            confident = np.flatnonzero(dets.scores >= min_score)
            if not len(confident):
                raise UserError(f"no face in enrolment photo {path}")
            best = int(confident[np.argmax(dets.areas()[confident])])
            vectors.append(analyzer.embed_photo(image, dets.landmarks[best][None])[0])
        gallery.add(name, np.stack(vectors))
    return set(photos)


def run_sequence(
    sequence: Sequence,
    analyzer: FaceAnalyzer,
    gallery,
    tracker_config: TrackerConfig,
    identity_config: IdentityConfig,
    display_threshold: float,
) -> tuple[list[RunState], int]:
    spec = analyzer.spec
    runs = [
        RunState(name, tracker, TrackIdentities(identity_config, spec.threshold, spec.metric))
        for name, tracker in (
            ("ours", ByteTracker(tracker_config, sequence.fps)),
            ("reference", ReferenceByteTrack(tracker_config, sequence.fps)),
        )
    ]
    detected = 0
    refiner = analyzer.refiner if analyzer.settings.refind_missed else None
    cap = score_cap(tracker_config)
    for frame, faces in sequence.frames:
        dets = analyzer.detect(frame)
        detected += int(np.sum(dets.scores >= display_threshold))
        detections = dets.boxes.astype(np.float64), dets.scores.astype(np.float64), dets.landmarks
        for run in runs:
            boxes, scores, lms = detections
            if refiner is not None and run.log:
                last = [t.box for t in run.log[-1][1]]
                boxes, scores, lms, _ = refind_missed(refiner, frame, last, boxes, scores, lms, cap)
            start = time.perf_counter()
            if isinstance(run.tracker, ByteTracker):
                tracks = ours_update(run.tracker, boxes, scores, lms)
            else:
                tracks = run.tracker.update(boxes, scores, lms)
            run.seconds += time.perf_counter() - start
            need = run.identities.select_for_embedding(tracks, frame)
            embeddings, matches = {}, {}
            if need:
                by_id = {t.track_id: t for t in tracks}
                landmarks = np.stack([by_id[i].landmarks for i in need])
                vectors = analyzer.embed(frame, landmarks, boxes=np.stack([by_id[i].box for i in need]))
                found = gallery.search(run.identities.query_vectors(need, vectors), k=2)
                embeddings = dict(zip(need, vectors, strict=True))
                matches = dict(zip(need, found, strict=True))
            labels = run.identities.update(tracks, embeddings, matches)
            run.log.append((faces, tracks, labels))
            run.detections.append((boxes, scores))
            run.evidence.append({t.track_id: run.identities.evidence(t.track_id) for t in tracks})
    return runs, detected


# -- metrics ---------------------------------------------------------------------------------------------


def with_lookahead(run: RunState, frames: int) -> RunState:
    """The run's log as the pipeline shows a file at NAME_LOOKAHEAD=`frames` (app/recognition/lookahead.py):
    each frame's pending tracks named where the track is named within the next `frames` frames."""

    def fill(entry: tuple, row: int, label: TrackLabel) -> None:
        track_id = entry[1][row].track_id
        shown = entry[2][track_id]
        entry[2][track_id] = TrackLabel(track_id, label.name, label.similarity, label.status, shown.linked_id)

    ahead: NameLookahead[tuple] = NameLookahead(frames, fill)
    log = []
    for faces, tracks, labels in run.log:
        boxes = np.array([t.box for t in tracks]).reshape(-1, 4)
        log += ahead.push((faces, tracks, dict(labels)), [t.track_id for t in tracks], labels, boxes)
    log += ahead.drain()
    return replace(run, log=log)


# Figures reported without look-ahead too (`causal`): what a live camera shows.
CAUSAL_KEYS = ("enrolled_named", "enrolled_faces", "identity_accuracy", "faces", "frames_to_name_median",
               "frames_to_first_correct_name", "enrolled_misnamed", "identity_flips",
               "unknown_named_as_known", "false_tracks_named")  # fmt: skip


def shown_id(track: TrackOut, labels: dict[int, TrackLabel]) -> int:
    """The id the pipeline shows: the earlier track's when the identity layer re-linked this one."""
    linked = labels[track.track_id].linked_id
    return track.track_id if linked is None else linked


def evaluate(
    run: RunState, enrolled: set[str], min_visible: float, detected: int
) -> tuple[dict, mm.MOTAccumulator]:
    accumulator = mm.MOTAccumulator(auto_id=True)  # on shown ids (tracker + re-linking)
    raw_accumulator = mm.MOTAccumulator(auto_id=True)  # on the tracker's own ids
    correct = total = named_unknown = misnamed = false_named = 0
    enrolled_faces = enrolled_named = 0
    last_name: dict[int, str] = {}
    flips = 0
    appearance_start: dict[int, int] = {}  # gt id -> frame its current appearance began
    named_in_appearance: dict[int, bool] = {}
    to_first_name: list[int] = []
    never_named: list[str] = []
    lost = dict.fromkeys(LOSS_CAUSES, 0)
    lost_small_undetected = lost_pending_new_track = lost_pending_restarted = 0
    first_track: dict[int, int] = {}  # gt id -> the first track id on it in its current appearance
    for index, (faces, tracks, labels) in enumerate(run.log):
        evidence = run.evidence[index] if index < len(run.evidence) else {}
        det_boxes = run.detections[index][0] if index < len(run.detections) else np.zeros((0, 4))
        cared = [f for f in faces if f.visible >= min_visible]
        ignored = [f for f in faces if f.visible < min_visible]
        hyp_boxes = np.array([t.box for t in tracks]).reshape(-1, 4)
        # Tracks on a don't-care face are dropped (neither false positive nor a match).
        if ignored and len(tracks):
            iou = box_iou(hyp_boxes, np.array([f.box for f in ignored]))
            cared_iou = box_iou(hyp_boxes, np.array([f.box for f in cared]).reshape(-1, 4))
            best_cared = cared_iou.max(axis=1) if cared else np.zeros(len(tracks))
            keep = ~((iou.max(axis=1) >= MATCH_IOU) & (best_cared < MATCH_IOU))
            tracks = [t for t, k in zip(tracks, keep, strict=True) if k]
            hyp_boxes = hyp_boxes[keep]
        gt_boxes = np.array([f.box for f in cared]).reshape(-1, 4)
        # motmetrics' own iou_matrix uses np.asfarray, gone in NumPy 2: same distances, NaN = cannot match.
        distances = 1.0 - box_iou(gt_boxes, hyp_boxes)
        distances[distances > 1.0 - MATCH_IOU] = np.nan
        accumulator.update([f.id for f in cared], [shown_id(t, labels) for t in tracks], distances)
        raw_accumulator.update([f.id for f in cared], [t.track_id for t in tracks], distances)
        # Identity: the same IoU matching, one track per face.
        pairs = linear_assignment(1.0 - box_iou(gt_boxes, hyp_boxes), 1.0 - MATCH_IOU).matches
        matched = {int(g): tracks[int(h)] for g, h in pairs}
        matched_tracks = {id(t) for t in matched.values()}
        for t in tracks:
            if id(t) not in matched_tracks and labels[t.track_id].status == "known":
                false_named += 1
        visible_ids = set()
        for g, face in enumerate(cared):
            visible_ids.add(face.id)
            if face.id not in appearance_start:
                appearance_start[face.id] = index
                named_in_appearance[face.id] = False
            total += 1
            track = matched.get(g)
            label = labels[track.track_id] if track is not None else None
            is_enrolled = face.label in enrolled
            if label is not None and label.status == "known":
                if not is_enrolled:
                    named_unknown += 1
                elif label.name != face.label:
                    misnamed += 1
                if face.id in last_name and last_name[face.id] != label.name:
                    flips += 1
                last_name[face.id] = label.name
            ok = label is not None and (
                (is_enrolled and label.status == "known" and label.name == face.label)
                or (not is_enrolled and label.status == "unknown")
            )
            correct += ok
            enrolled_faces += is_enrolled
            enrolled_named += is_enrolled and ok
            if track is not None:
                first_track.setdefault(face.id, track.track_id)
            if is_enrolled and not ok:
                cause = _loss_cause(face, track, label, evidence, det_boxes)
                lost[cause] += 1
                if cause == "not_detected" and face.box[3] - face.box[1] < SMALL_FACE:
                    lost_small_undetected += 1
                if cause.startswith("pending") and track is not None:
                    lost_pending_new_track += first_track.get(face.id) != track.track_id
                    state = evidence.get(track.track_id)
                    lost_pending_restarted += state is not None and state.restarted > 0
            if is_enrolled and ok and not named_in_appearance[face.id]:
                named_in_appearance[face.id] = True
                to_first_name.append(index - appearance_start[face.id])
        for gt_id in list(appearance_start):
            if gt_id not in visible_ids:  # the appearance ended
                if not named_in_appearance[gt_id]:
                    never_named.append(f"id{gt_id}@{appearance_start[gt_id]}-{index}")
                del appearance_start[gt_id]
                del named_in_appearance[gt_id]
                first_track.pop(gt_id, None)
    for gt_id, named in named_in_appearance.items():
        if not named:
            never_named.append(f"id{gt_id}@{appearance_start[gt_id]}-end")
    summary = mm.metrics.create().compute(
        accumulator,
        metrics=["mota", "idf1", "num_switches", "precision", "recall", "num_false_positives", "num_misses"],
    )
    row = summary.iloc[0]
    raw = mm.metrics.create().compute(raw_accumulator, metrics=["idf1", "num_switches"]).iloc[0]
    enrolled_never_named = [n for n in never_named if _label_of(run, n) in enrolled]
    return {
        "mota": float(row["mota"]),
        "idf1": float(row["idf1"]),
        "id_switches": int(row["num_switches"]),
        "idf1_tracker_ids": float(raw["idf1"]),
        "id_switches_tracker_ids": int(raw["num_switches"]),
        "precision": float(row["precision"]),
        "recall": float(row["recall"]),
        "false_positives": int(row["num_false_positives"]),
        "misses": int(row["num_misses"]),
        "identity_accuracy": correct / max(total, 1),
        "faces": total,
        "frames_to_first_correct_name": to_first_name,
        "frames_to_name_median": float(np.median(to_first_name)) if to_first_name else None,
        "enrolled_faces": enrolled_faces,
        "enrolled_named": enrolled_named / max(enrolled_faces, 1),
        "appearances_never_named": enrolled_never_named,
        # enrolled face-frames not named correctly, by cause (LOSS_CAUSES), plus two overlapping counts
        "enrolled_lost": {
            **lost,
            "not_detected_small": lost_small_undetected,  # of not_detected: faces under SMALL_FACE px
            "pending_on_later_track": lost_pending_new_track,  # of pending_*: not the appearance's 1st track
            "pending_after_restart": lost_pending_restarted,  # of pending_*: template restarted on the track
        },
        "unknown_named_as_known": named_unknown,
        "enrolled_misnamed": misnamed,
        "identity_flips": flips,
        "false_tracks_named": false_named,
        "embeddings": run.identities.counters.embeddings,
        "detections": detected,
        "embeddings_per_detection": run.identities.counters.embeddings / max(detected, 1),
        "relinks": run.identities.counters.relinks,
        "tracker_ms_per_frame": 1000 * run.seconds / max(len(run.log), 1),
    }, accumulator


def _loss_cause(
    face: GroundTruthFace,
    track: TrackOut | None,
    label: TrackLabel | None,
    evidence: dict[int, TrackEvidence | None],
    det_boxes: np.ndarray,
) -> str:
    """The first of LOSS_CAUSES that explains why this enrolled face is not shown with its name."""
    if track is None or label is None:
        overlap = box_iou(np.array([face.box]), det_boxes.reshape(-1, 4))[0]
        return "detected_no_track" if overlap.size and overlap.max() >= MATCH_IOU else "not_detected"
    if label.status == "known":
        return "wrong_name"
    if label.status == "unknown":
        return "decided_unknown"
    state = evidence.get(track.track_id)
    if state is None or state.embedded == 0:
        return "not_embedded"
    return {"below": "pending_below_threshold", "abstain": "pending_abstained"}.get(
        state.last_vote, "pending_waiting_votes"
    )


def _label_of(run: RunState, appearance: str) -> str | None:
    gt_id = int(appearance[2:].split("@")[0])
    for faces, _, _ in run.log:
        for face in faces:
            if face.id == gt_id:
                return face.label
    return None


def combine(results: list[dict], accumulators: list[mm.MOTAccumulator], names: list[str]) -> dict:
    summary = mm.metrics.create().compute_many(
        accumulators, metrics=["mota", "idf1", "num_switches"], names=names, generate_overall=True
    )
    overall = summary.loc["OVERALL"]
    faces = sum(r["faces"] for r in results)
    detections = sum(r["detections"] for r in results)
    causal = {}
    if results and "causal" in results[0]:
        runs = [r["causal"] for r in results]
        firsts = [f for r in runs for f in r["frames_to_first_correct_name"]]
        causal = {
            "enrolled_named": sum(r["enrolled_named"] * r["enrolled_faces"] for r in runs)
            / max(sum(r["enrolled_faces"] for r in runs), 1),
            "identity_accuracy": sum(r["identity_accuracy"] * r["faces"] for r in runs) / max(faces, 1),
            "frames_to_name_median": float(np.median(firsts)) if firsts else None,
            **{k: sum(r[k] for r in runs) for k in CAUSAL_KEYS[6:]},
        }
    return {
        "mota": float(overall["mota"]),
        "idf1": float(overall["idf1"]),
        "id_switches": int(overall["num_switches"]),
        "identity_accuracy": sum(r["identity_accuracy"] * r["faces"] for r in results) / max(faces, 1),
        "unknown_named_as_known": sum(r["unknown_named_as_known"] for r in results),
        "embeddings_per_detection": sum(r["embeddings"] for r in results) / max(detections, 1),
        "identity_flips": sum(r["identity_flips"] for r in results),
        "enrolled_named": sum(r["enrolled_named"] * r["enrolled_faces"] for r in results)
        / max(sum(r["enrolled_faces"] for r in results), 1),
        "frames_to_name_median": float(np.median(firsts))
        if (firsts := [f for r in results for f in r["frames_to_first_correct_name"]])
        else None,
        "enrolled_misnamed": sum(r["enrolled_misnamed"] for r in results),
        "false_tracks_named": sum(r["false_tracks_named"] for r in results),
        "enrolled_lost": {
            cause: sum(r["enrolled_lost"][cause] for r in results) for cause in results[0]["enrolled_lost"]
        }
        if results
        else {},
        "frames_to_first_correct_name_max": max(
            max(r["frames_to_first_correct_name"] or [0]) for r in results
        ),
        "name_lookahead": results[0]["name_lookahead"] if results else 0,
        **({"causal": causal} if causal else {}),
    }


def print_result(sequence: str, name: str, result: dict) -> None:
    first = result["frames_to_first_correct_name"]
    print(
        f"{sequence:20s} {name:9s} MOTA {result['mota']:.3f}  IDF1 {result['idf1']:.3f}  "
        f"IDsw {result['id_switches']:2d}  (tracker ids: IDF1 {result['idf1_tracker_ids']:.3f} "
        f"IDsw {result['id_switches_tracker_ids']})  "
        f"FP {result['false_positives']:3d}  miss {result['misses']:3d}  "
        f"id-acc {result['identity_accuracy']:.3f}  enrolled-named {result['enrolled_named']:.3f}  "
        f"first-name {first}  "
        f"unknown-named {result['unknown_named_as_known']}  misnamed {result['enrolled_misnamed']}  "
        f"flips {result['identity_flips']}  emb/det {result['embeddings_per_detection']:.3f} "
        f"({result['embeddings']}/{result['detections']})  relinks {result['relinks']}  "
        f"track {result['tracker_ms_per_frame']:.2f} ms/frame"
    )
    lost = {cause: n for cause, n in result["enrolled_lost"].items() if n}
    print(f"{'':20s} {'':9s} enrolled face-frames not named ({result['enrolled_faces']} in all): {lost}")
    if result["appearances_never_named"]:
        print(f"{'':20s} {'':9s} enrolled appearances never named: {result['appearances_never_named']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        nargs="+",
        choices=("standard", "strangers", "crowd", "hard"),
        default=["standard", "strangers"],
        help="crowd: 10 faces at 1080p passing in front of each other (the benchmark script); hard: 10 "
        "enrolled people of the identity photo sets (1 or 3 photos), strangers and look-alike relatives, "
        "small faces, crossings, returns (20 s at least)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--video", type=Path, help="evaluate a written demo video (+ .gt.json) instead")
    parser.add_argument("--min-visible", type=float, default=0.5, help="faces less visible are don't-care")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--lookahead",
        type=int,
        default=None,
        help="name look-ahead in frames, as the pipeline applies to files (default: NAME_LOOKAHEAD); the "
        "figures without it are under 'causal'",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        tracker_config, identity_config = TrackerConfig(), IdentityConfig()
        with tempfile.TemporaryDirectory() as tmp:
            display = load_settings({"threads": args.threads}, env_file=None)
            lookahead = display.name_lookahead if args.lookahead is None else max(0, args.lookahead)
            settings = display.replace(det_threshold=tracker_config.low_thresh, qdrant_path=Path(tmp))
            analyzer = FaceAnalyzer(settings)
            gallery = open_gallery(settings, analyzer.spec)
            enrolled = enrol(analyzer, gallery, min_score=display.det_threshold)
            if args.video is not None:
                sequences = [from_video(args.video)]
            else:
                sequences = [
                    generated(k, s, args.seconds, args.fps) for k in args.scenario for s in args.seeds
                ]
            per_tracker: dict[str, tuple[list[dict], list[mm.MOTAccumulator]]] = {
                "ours": ([], []),
                "reference": ([], []),
            }
            reference_kind = ""
            details = {}
            for number, sequence in enumerate(sequences):
                own = gallery
                if sequence.enroll is not None:  # its own people: a gallery of their own
                    own = open_gallery(settings.replace(qdrant_path=Path(tmp) / f"g{number}"), analyzer.spec)
                    who = enrol(analyzer, own, sequence.enroll, display.det_threshold)
                runs, detected = run_sequence(
                    sequence, analyzer, own, tracker_config, identity_config, display.det_threshold
                )
                if own is not gallery:
                    own.close()
                for run in runs:
                    known = enrolled if sequence.enroll is None else who
                    shown = with_lookahead(run, lookahead) if lookahead else run
                    result, accumulator = evaluate(shown, known, args.min_visible, detected)
                    if lookahead:
                        causal = evaluate(run, known, args.min_visible, detected)[0]
                        result["causal"] = {k: causal[k] for k in CAUSAL_KEYS}
                    result["name_lookahead"] = lookahead
                    per_tracker[run.name][0].append(result)
                    per_tracker[run.name][1].append(accumulator)
                    details.setdefault(sequence.name, {})[run.name] = result
                    print_result(sequence.name, run.name, result)
                    if run.name == "reference":
                        reference_kind = run.tracker.kind
            gallery.close()
        names = [s.name for s in sequences]
        ours = combine(*per_tracker["ours"], names)
        reference = combine(*per_tracker["reference"], names)
        spec = analyzer.spec
        print(f"reference tracker: {reference_kind}; embedder {spec.model_id} threshold {spec.threshold}")
        for name, totals in (("ours", ours), ("reference", reference)):
            print(
                f"TOTAL {name:9s} MOTA {totals['mota']:.3f}  IDF1 {totals['idf1']:.3f}  "
                f"IDsw {totals['id_switches']}  id-acc {totals['identity_accuracy']:.3f}  "
                f"unknown-named {totals['unknown_named_as_known']}  flips {totals['identity_flips']}  "
                f"emb/det {totals['embeddings_per_detection']:.3f}"
            )
        print(
            json.dumps({**ours, "reference": {"tracker": reference_kind, **reference}, "sequences": details})
        )
        return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
