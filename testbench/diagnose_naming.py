"""Why a person is not named on a frame: where each of their faces is lost, frame by frame.

    .venv/bin/python testbench/diagnose_naming.py --video ../shared/data/faces/short_hamilton_clip.mp4 \
        --enroll "Lin-Manuel Miranda=../shared/data/faces/lin-manuel-miranda.png" \
        --enroll "Alex Lacamoire=../shared/data/faces/alex-lacamoire.png" \
        --truth-json '{"Lin-Manuel Miranda": [[0, 19, 480, 0, 640, 140], [82, 210, 100, 0, 420, 220]]}' \
        [--person "Lin-Manuel Miranda"] [--tracks t.jsonl] [--frames 0:20] [--json]

The clip is replayed the way the pipeline sees it: RetinaFace at the pipeline's fitted input (DET_SIZE,
candidates down to the tracker's low threshold), a new tracker at each scene cut, our ByteTracker, the
identity policy (TrackIdentities) embedding the faces it selects and searching their templates in a temporary
Qdrant gallery of the --enroll photos. Models and settings come from the settings (.env, FACEPIPE_*), as for
`app.main`. Unlike the pipeline, answers are applied on the frame itself (the pipeline applies them one frame
later on files, RESULT_LAG), so the replay can name a frame earlier; pass --tracks (the `--tracks-out` file of
a real run on the same clip and gallery) to see the pipeline's own label beside it. A file's run names a
track's first views up to NAME_LOOKAHEAD frames before it decides (app/recognition/lookahead.py): to compare
with the replay's causal labels, make that run with FACEPIPE_NAME_LOOKAHEAD=0.

Where the person is (--truth FILE or --truth-json TEXT, regions as in scan_video_threshold.py: {NAME: [[first,
last, x1, y1, x2, y2], ...]}, frames 0-based inclusive, source pixels; a face is NAME's when its box centre is
in one of NAME's regions), each of their frames gets the first stage that loses it:

- not detected: no detection above DET_THRESHOLD in the region (`best` shows the best score below it, if any),
- not tracked: detected, but no confirmed track on the face (the tracker's start/confirmation rules),
- not embeddable: the identity policy never embeds this face (smaller than min_face_size, or less than
  min_inside of the box inside the frame),
- weak embedding: the face's own embedding (made here on every frame, whether or not the policy picked it)
  scores below the threshold against the person,
- policy: the embedding reaches the threshold, but the track is not named the person (still pending, decided
  unknown, or waiting on votes/margins): the voting policy's call,
- wrong name / named.

Per frame it prints the face's height, detector score, quality terms (app.recognition.quality: size, frontal,
sharpness, detector, their product), its own similarity to the person and to the closest other enrolled
person, whether the policy embedded it on this frame (and its template's similarity then), and the label.
The last line is JSON: counts per stage and the frames of each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # its sibling scripts (tests/testbench shadows the name)

from scan_video_threshold import enroll  # noqa: E402

from app.config import load_settings  # noqa: E402
from app.errors import UserError  # noqa: E402
from app.gallery.factory import open_gallery  # noqa: E402
from app.recognition import quality as face_quality  # noqa: E402
from app.recognition.analyzer import FaceAnalyzer  # noqa: E402
from app.recognition.identity import TrackIdentities  # noqa: E402
from app.recognition.identity_config import IdentityConfig  # noqa: E402
from app.stages.recognize import SceneCutDetector, TrackFace  # noqa: E402
from app.tracking import ByteTracker, TrackerConfig  # noqa: E402
from app.tracking.matching import box_iou  # noqa: E402
from app.vision.retinaface import RetinaFacePostprocessor, RetinaFacePreprocessor, fitted_input_hw  # noqa: E402

STAGES = ("not detected", "not tracked", "not embeddable", "weak embedding", "policy", "wrong name", "named")
TRACK_IOU = 0.5  # a track is on the face when its detection box overlaps the face's this much


@dataclass
class FrameVerdict:
    frame: int
    stage: str
    height: float | None = None
    score: float | None = None
    quality: dict[str, float] | None = None
    similarity: float | None = None  # the face's own embedding against the person
    other: tuple[str, float] | None = None  # closest other enrolled person and similarity
    embedded: float | None = None  # the template's similarity to the person when the policy embedded it
    status: str | None = None  # the replay's label: pending / unknown / known
    name: str | None = None
    pipeline: str | None = None  # the label of a real run (--tracks): a name, "-" for none


def parse_truth(text: str, where: str) -> dict[str, list[list[float]]]:
    try:
        truth = json.loads(text)
        if not isinstance(truth, dict):
            raise ValueError("not a JSON object")
        for regions in truth.values():
            for region in regions:
                if len(region) != 6:
                    raise ValueError(f"region {region} is not [first, last, x1, y1, x2, y2]")
        return {str(k): [[float(x) for x in r] for r in v] for k, v in truth.items()}
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: {exc}; see the format in this script's docstring") from None


def region_of(truth: dict[str, list[list[float]]], person: str, frame: int) -> list[list[float]]:
    return [r for r in truth.get(person, []) if r[0] <= frame <= r[1]]


def in_regions(boxes: np.ndarray, regions: list[list[float]]) -> np.ndarray:
    """(N,) bool: box centre inside one of the regions."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 if len(boxes) else np.zeros((0, 2))
    inside = np.zeros(len(boxes), bool)
    for _, _, x1, y1, x2, y2 in regions:
        inside |= (centre >= (x1, y1)).all(1) & (centre <= (x2, y2)).all(1)
    return inside


def parse_frames(text: str | None) -> range | None:
    if text is None:
        return None
    first, _, last = text.partition(":")
    try:
        return range(int(first), int(last))
    except ValueError:
        raise UserError(f"--frames {text!r} is not FIRST:STOP (e.g. 0:20)") from None


def pipeline_names(path: Path) -> dict[int, list[tuple[np.ndarray, str | None]]]:
    """frame -> [(box, name)] of a --tracks-out file."""
    out: dict[int, list[tuple[np.ndarray, str | None]]] = {}
    try:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out.setdefault(int(row["frame"]), []).append(
                (np.asarray(row["box"], np.float64), row.get("name"))
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--tracks {path}: {exc}; pass the --tracks-out file of app.main") from None
    return out


class Replay:
    """Detector at the pipeline's input, tracker with scene cuts, identity policy: one frame at a time."""

    def __init__(
        self, analyzer: FaceAnalyzer, gallery, frame_hw: tuple[int, int], score_floor: float, fps: float
    ) -> None:
        self.analyzer = analyzer
        settings = analyzer.settings
        fixed = analyzer.detector.inputs[0].fixed_hw
        hw = tuple(fixed) if fixed is not None else fitted_input_hw([frame_hw], settings.det_size)
        self.preprocess = RetinaFacePreprocessor(hw)
        self.postprocess = RetinaFacePostprocessor(hw, score_floor, settings.nms_threshold)
        self.gallery = gallery
        self.tracker_config = TrackerConfig.from_settings(settings)
        self.identity_config = IdentityConfig()
        spec = analyzer.spec
        self.identities = TrackIdentities(self.identity_config, spec.threshold, spec.metric)
        self.cuts = SceneCutDetector()
        self.fps = fps
        self.tracker = ByteTracker(self.tracker_config, frame_rate=fps)
        self.offset = self.max_id = 0

    def detect(self, frame: np.ndarray):
        batch, scale = self.preprocess(frame)
        return self.postprocess(self.analyzer.detector.run(batch[None]), [scale], [frame.shape[1::-1]])[0]

    def step(self, frame: np.ndarray, dets) -> tuple[list, dict, dict]:
        """-> (tracks, labels by track id, template matches of the tracks embedded now)."""
        if self.cuts.is_cut(frame):
            self.offset = self.max_id
            self.tracker = ByteTracker(self.tracker_config, frame_rate=self.fps)
        tracks = [  # run-wide ids, as the recognition stage numbers them across cuts
            TrackFace(t.track_id + self.offset, t.detection_box, t.detection_box, t.landmarks, t.score)
            for t in self.tracker.update(dets.boxes, dets.scores, dets.landmarks)
        ]
        self.max_id = max([self.max_id, *(t.track_id for t in tracks)])
        need = self.identities.select_for_embedding(tracks, frame)
        embeddings, matches = {}, {}
        if need:
            by_id = {t.track_id: t for t in tracks}
            landmarks = np.stack([by_id[i].landmarks for i in need])
            vectors = self.analyzer.embed(frame, landmarks, boxes=np.stack([by_id[i].box for i in need]))
            found = self.gallery.search(self.identities.query_vectors(need, vectors), k=2)
            embeddings, matches = dict(zip(need, vectors, strict=True)), dict(zip(need, found, strict=True))
        return tracks, self.identities.update(tracks, embeddings, matches), matches


def verdict_for(
    frame_index: int,
    frame: np.ndarray,
    dets,
    face: int,
    person: str,
    replay: Replay,
    step: tuple[list, dict, dict],
    enrolled: tuple[list[str], np.ndarray, np.ndarray],
) -> FrameVerdict:
    """The stage that loses face `face` (an index into dets, already known to be above DET_THRESHOLD)."""
    analyzer, cfg = replay.analyzer, replay.identity_config
    box, landmarks = dets.boxes[face], dets.landmarks[face]
    q = face_quality.face_quality(frame, box[None], landmarks[None], dets.scores[face : face + 1])
    terms = {
        "size": float(q.size[0]),
        "frontal": float(q.frontal[0]),
        "sharp": float(q.sharpness[0]),
        "det": float(q.detector[0]),
        "q": float(q.quality[0]),
    }
    names, vectors, owner = enrolled
    similarity = analyzer.spec.similarity(analyzer.embed(frame, landmarks[None], box[None]), vectors)[0]
    per_person = {n: float(similarity[owner == i].max()) for i, n in enumerate(names)}
    mine = per_person.get(person, float("-inf"))
    others = [(n, s) for n, s in per_person.items() if n != person]
    verdict = FrameVerdict(
        frame_index,
        "",
        float(box[3] - box[1]),
        float(dets.scores[face]),
        terms,
        round(mine, 4),
        max(others, key=lambda o: o[1]) if others else None,
    )
    tracks, labels, matches = step
    on_face = [t for t in tracks if box_iou(t.detection_box[None], box[None])[0, 0] >= TRACK_IOU]
    if not on_face:
        verdict.stage = "not tracked"
        return verdict
    track = on_face[0]
    label = labels.get(track.track_id)
    verdict.status = label.status if label is not None else "pending"
    verdict.name = label.name if label is not None else None
    if track.track_id in matches:
        hits = [m.similarity for m in matches[track.track_id] if m.name == person]
        verdict.embedded = round(float(hits[0]), 4) if hits else float("nan")
    inside = float(face_quality.inside_fraction(box[None], frame.shape[:2])[0])
    if verdict.name == person:
        verdict.stage = "named"
    elif verdict.name is not None:
        verdict.stage = "wrong name"
    elif verdict.height is not None and (verdict.height < cfg.min_face_size or inside < cfg.min_inside):
        verdict.stage = "not embeddable"
    elif mine < analyzer.spec.threshold:
        verdict.stage = "weak embedding"
    else:
        verdict.stage = "policy"
    return verdict


def diagnose(args: argparse.Namespace) -> tuple[dict[str, list[FrameVerdict]], float, str]:
    truth = (
        parse_truth(args.truth.read_text(), f"--truth {args.truth}")
        if args.truth is not None
        else parse_truth(args.truth_json or "{}", "--truth-json")
    )
    people = args.person or list(truth)
    if not people:
        raise UserError("no person to diagnose: pass --truth/--truth-json with their regions")
    frames_wanted = parse_frames(args.frames)
    pipeline = pipeline_names(args.tracks) if args.tracks is not None else None
    settings = load_settings()
    capture = cv2.VideoCapture(str(args.video)) if args.video.is_file() else None
    ok, first = capture.read() if capture is not None else (False, None)
    if not ok or first is None:
        raise UserError(f"cannot read frames from video {args.video}; check the path and that it is a video")
    verdicts: dict[str, list[FrameVerdict]] = {p: [] for p in people}
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = FaceAnalyzer(settings.replace(qdrant_path=Path(tmp)))
        enrolled = enroll(analyzer, args.enroll)
        for person in people:
            if person not in enrolled[0]:
                raise UserError(f"{person!r} is diagnosed but not enrolled; add --enroll '{person}=IMAGE'")
        gallery = open_gallery(analyzer.settings, analyzer.spec)
        try:
            for i, name in enumerate(enrolled[0]):
                gallery.add(name, enrolled[1][enrolled[2] == i])
            low = TrackerConfig.from_settings(settings).low_thresh
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            replay = Replay(analyzer, gallery, first.shape[:2], min(settings.det_threshold, low), fps)
            frame_index, frame = 0, first
            while frame is not None and (args.max_frames <= 0 or frame_index < args.max_frames):
                dets = replay.detect(frame)
                step = replay.step(frame, dets)
                if frames_wanted is None or frame_index in frames_wanted:
                    for person in people:
                        regions = region_of(truth, person, frame_index)
                        if regions:
                            verdicts[person].append(
                                one_face(frame_index, frame, dets, person, regions, replay, step, enrolled)
                            )
                            if pipeline is not None:
                                verdicts[person][-1].pipeline = pipeline_label(
                                    pipeline.get(frame_index, []), regions
                                )
                ok, frame = capture.read()
                frame_index += 1
                frame = frame if ok else None
        finally:
            gallery.close()
            capture.release()
    return verdicts, analyzer.spec.threshold, analyzer.spec.model_id


def one_face(frame_index, frame, dets, person, regions, replay, step, enrolled) -> FrameVerdict:
    inside = np.flatnonzero(in_regions(dets.boxes, regions))
    shown = inside[dets.scores[inside] >= replay.analyzer.settings.det_threshold]
    if not len(shown):
        best = float(dets.scores[inside].max()) if len(inside) else None
        return FrameVerdict(frame_index, "not detected", score=best)
    face = int(shown[np.argmax(dets.areas()[shown])])  # the largest face in the region
    return verdict_for(frame_index, frame, dets, face, person, replay, step, enrolled)


def pipeline_label(rows: list[tuple[np.ndarray, str | None]], regions: list[list[float]]) -> str:
    if not rows:
        return "-"
    boxes = np.stack([b for b, _ in rows])
    names = [rows[i][1] for i in np.flatnonzero(in_regions(boxes, regions))]
    return next((n for n in names if n), "-")


def spans(frames: list[int]) -> str:
    out: list[list[int]] = []
    for f in frames:
        if out and f == out[-1][1] + 1:
            out[-1][1] = f
        else:
            out.append([f, f])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def print_table(person: str, verdicts: list[FrameVerdict], threshold: float) -> None:
    print(f"{person} (threshold {threshold:.3f}):")
    print(
        "frame stage            h     score size  front sharp det   q     sim    other         embed  label"
    )
    for v in verdicts:
        q = v.quality or {}
        other = f"{v.other[0][:7]} {v.other[1]:.3f}" if v.other else ""
        cells = [
            f"{v.frame:5d} {v.stage:15s}",
            f"{v.height:5.0f}" if v.height is not None else "    -",
            f"{v.score:.3f}" if v.score is not None else "    -",
            " ".join(f"{q[k]:.2f} " for k in ("size", "frontal", "sharp", "det", "q")) if q else " " * 29,
            f"{v.similarity:.3f}" if v.similarity is not None else "    -",
            f"{other:13s}",
            f"{v.embedded:.3f}" if v.embedded is not None else "    -",
            (v.name or v.status or "-") + (f" [run: {v.pipeline}]" if v.pipeline is not None else ""),
        ]
        print(" ".join(cells))


def summary(verdicts: dict[str, list[FrameVerdict]], model_id: str, threshold: float) -> dict:
    result: dict = {"model": model_id, "threshold": threshold, "people": {}}
    for person, rows in verdicts.items():
        by_stage = {s: [v.frame for v in rows if v.stage == s] for s in STAGES}
        entry = {
            "frames": len(rows),
            "stages": {s: len(f) for s, f in by_stage.items() if f},
            "frames_by_stage": {s: spans(f) for s, f in by_stage.items() if f},
        }
        if any(v.pipeline is not None for v in rows):
            entry["pipeline_named"] = sum(v.pipeline == person for v in rows)
        result["people"][person] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--enroll", action="append", required=True, metavar="NAME=IMAGE")
    parser.add_argument("--truth", type=Path, help="where each person is: JSON file of regions")
    parser.add_argument("--truth-json", help="the same as JSON text")
    parser.add_argument("--person", action="append", help="diagnose only this person (repeatable)")
    parser.add_argument("--tracks", type=Path, help="a --tracks-out file of a real run, shown beside")
    parser.add_argument("--frames", help="FIRST:STOP, print only these frames (the replay runs from 0)")
    parser.add_argument("--max-frames", type=int, default=0, help="replay only the first N frames (0 = all)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        verdicts, threshold, model_id = diagnose(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        for person, rows in verdicts.items():
            print_table(person, rows, threshold)
    print(json.dumps(summary(verdicts, model_id, threshold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
