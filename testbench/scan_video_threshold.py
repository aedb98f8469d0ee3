"""Open-set threshold scan on a video: every detected face against a few enrolled people, per threshold.

    .venv/bin/python testbench/scan_video_threshold.py --video ../shared/data/faces/short_hamilton_clip.mp4 \
        --enroll Lin=../shared/data/faces/lin-manuel-miranda.png \
        --enroll Alex=../shared/data/faces/alex-lacamoire.png [--thresholds 0.36:0.56:0.02] [--truth T.json]

A face is named P at threshold t when P owns its most similar enrolled vector (a k=1 gallery search; repeat
--enroll NAME=IMAGE for more images of P) and that similarity is >= t. Models come from the settings (.env).
Output: a table, then one JSON line (thresholds, named/true/false {name: [per threshold]}, labelled, ...).

Strangers. Scores cannot define them: on this clip Alex's own faces (0.38-0.445) score like unenrolled
audience faces (up to 0.44), so any score-based rule would be circular. Identity comes only from by-eye
labels, written as regions: --truth is JSON {NAME: [[first_frame, last_frame, x1, y1, x2, y2], ...]} (frames
0-based inclusive, source pixels); a face is NAME when its box centre lies in one of NAME's regions, else a
stranger. Then true/false names are counted and max_stranger_similarity is the highest similarity any face
reaches to an enrolled person it is not; without --truth it is null. Labels for short_hamilton_clip.mp4
(cuts at frames 20, 82, 211; the curly-haired close-up of frames 20-51 is Alex, not Lin in profile):
    {"Lin": [[0, 19, 480, 0, 640, 140], [82, 210, 100, 0, 420, 220]],
     "Alex": [[0, 19, 20, 150, 110, 240], [20, 50, 360, 0, 640, 360], [51, 51, 520, 0, 640, 360]]}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import load_settings  # noqa: E402
from app.errors import UserError  # noqa: E402
from app.recognition.analyzer import FaceAnalyzer  # noqa: E402
from app.vision.image_io import read_image  # noqa: E402


def parse_thresholds(text: str) -> np.ndarray:
    """START:STOP:STEP (stop included) -> thresholds."""
    try:
        start, stop, step = (float(p) for p in text.split(":"))
    except ValueError:
        start = stop = step = -1.0
    if step <= 0 or stop < start:
        raise UserError(f"--thresholds {text!r} is not START:STOP:STEP (e.g. 0.36:0.56:0.02)")
    return np.round(np.arange(start, stop + step / 2, step), 6)


def enroll(analyzer: FaceAnalyzer, items: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """NAME=IMAGE items -> (names in first-seen order, vectors (K,D), owner (K,) index into names)."""
    names, vectors, owner = [], [], []
    for item in items:
        name, _, path = item.partition("=")
        if not name or not path:
            raise UserError(f"--enroll {item!r} is not NAME=IMAGE")
        detections = analyzer.detect_photo(image := read_image(path))
        if (index := detections.largest()) is None:
            raise UserError(f"no face found in {path}; enroll a photo with a visible face")
        names += [name] if name not in names else []
        vectors.append(analyzer.embed_photo(image, detections.landmarks[index : index + 1])[0])
        owner.append(names.index(name))
    return names, np.stack(vectors), np.array(owner)


def scan_video(
    analyzer: FaceAnalyzer, path: Path, max_frames: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """-> (frames read, frame index (N,), boxes (N,4), embeddings (N,D)) of every detected face."""
    capture = cv2.VideoCapture(str(path)) if path.is_file() else None  # a non-file could open a camera
    frame_of, boxes, embeddings = [], [], []
    while capture is not None and (max_frames <= 0 or len(boxes) < max_frames):
        ok, frame = capture.read()
        if not ok:
            break
        detections = analyzer.detect(frame)
        frame_of += [len(boxes)] * len(detections)
        boxes.append(detections.boxes)
        embeddings.append(analyzer.embed(frame, detections.landmarks))
    if not boxes:
        raise UserError(f"cannot read frames from video {path}; check the path and that it is a video")
    return len(boxes), np.array(frame_of, int), np.concatenate(boxes), np.concatenate(embeddings)


def label_faces(truth_path: Path, names: list[str], frame_of: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) index into names of each face's by-eye label, -1 for a stranger (see the module docstring)."""
    try:
        labels, centre = np.full(len(frame_of), -1), (boxes[:, :2] + boxes[:, 2:]) / 2
        for name, regions in json.loads(truth_path.read_text()).items():
            if name not in names:
                raise UserError(f"--truth labels {name!r}, who is not enrolled; enroll or drop them")
            for first, last, x1, y1, x2, y2 in regions:
                inside = (frame_of >= first) & (frame_of <= last) & (centre >= (x1, y1)).all(1)
                labels[inside & (centre <= (x2, y2)).all(1)] = names.index(name)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"--truth {truth_path}: {exc}; see the format in this script's docstring") from None
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--enroll", action="append", required=True, metavar="NAME=IMAGE")
    parser.add_argument("--thresholds", default="0.36:0.56:0.02", help="START:STOP:STEP, similarity")
    parser.add_argument("--truth", type=Path, help="by-eye label regions, JSON (see the module docstring)")
    parser.add_argument("--max-frames", type=int, default=0, help="scan only the first N frames (0 = all)")
    args = parser.parse_args(argv)
    try:
        thresholds = parse_thresholds(args.thresholds)
        analyzer = FaceAnalyzer(load_settings())
        names, vectors, owner = enroll(analyzer, args.enroll)
        frames, frame_of, boxes, embeddings = scan_video(analyzer, args.video, args.max_frames)
        labels = None if args.truth is None else label_faces(args.truth, names, frame_of, boxes)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw = analyzer.spec.similarity(embeddings, vectors)  # (N,K), then (N,P): each person's closest vector
    per_person = np.stack([raw[:, owner == p].max(1) for p in range(len(names))], 1)
    best, best_sim = per_person.argmax(1), per_person.max(1)
    named = (best == np.arange(len(names))[:, None, None]) & (best_sim >= thresholds[:, None])  # (P,T,N)
    result: dict = {"thresholds": thresholds.tolist(), "faces": len(best), "frames": frames}
    result["named"] = {n: named[p].sum(1).tolist() for p, n in enumerate(names)}
    result["max_stranger_similarity"] = None
    print(f"{analyzer.spec.model_id}: {len(best)} faces in {frames} frames")
    for p, name in enumerate(names):
        mine = np.percentile(best_sim[best == p], [50, 90, 99, 100]).round(3) if (best == p).any() else "-"
        print(f"  best match {name}: {(best == p).sum()} faces, similarity p50 p90 p99 max: {mine}")
    if labels is not None:
        result["labelled"] = {n: int((labels == p).sum()) for p, n in enumerate(names)}
        result["true"] = {n: (named[p] & (labels == p)).sum(1).tolist() for p, n in enumerate(names)}
        result["false"] = {n: (named[p] & (labels != p)).sum(1).tolist() for p, n in enumerate(names)}
        impostor = np.where(labels[:, None] == np.arange(len(names)), -np.inf, per_person)
        result["max_stranger_similarity"] = round(float(impostor.max()), 4) if impostor.size else None
        print(f"  labelled {result['labelled']}; max stranger similarity {result['max_stranger_similarity']}")
    columns = dict(result["named"])
    for n in names if labels is not None else []:
        columns[f"{n} recall"] = [f"{x / max(result['labelled'][n], 1):.0%}" for x in result["true"][n]]
        columns[f"{n} false"] = result["false"][n]
    print("threshold" + "".join(f"{c:>13}" for c in columns))
    for t, threshold in enumerate(thresholds):
        print(f"{threshold:9.3f}" + "".join(f"{v[t]:>13}" for v in columns.values()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
