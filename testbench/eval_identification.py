"""Open-set 1:N identification on photo folders: who of the enrolled people is this, or a stranger?

Protocol (app/recognition/calibration.py): per seeded random split, half the people are enrolled with K
photos each (their other photos are probes), the rest are strangers; rates pooled over N splits.

    .venv/bin/python testbench/eval_identification.py --images ../shared/data/identities --enroll 1
    .venv/bin/python testbench/eval_identification.py --images ../shared/data/identities --enroll 3 --per-set
    .venv/bin/python testbench/eval_identification.py --images ../shared/data/identities --enroll 1 \
        --embedder checkpoints/mobilefacenet.onnx --flip --fuse checkpoints/dlib_resnet.onnx --fuse-weight 0.4

Prints per-set lines with --per-set, then one JSON line last (all sets pooled): identified and
strangers_accepted at the shipped threshold (or --threshold), threshold, identified_at_far_1e-2 / 1e-3
(with the thresholds there), rank1, enroll, people, probes. Thresholds are similarities.

Small faces (--probe-face-px): enrolment stays the full-size photos (the photo path, as `enroll` does); each
probe photo is drawn as the hard tracking scenario draws its actors (app.demo: the elliptical sprite, scaled
so its face box is N px high, on the scenario's background, in a --frame sized frame) and goes through the
video path: RetinaFace on the frame at the settings' DET_SIZE (FACEPIPE_DET_SIZE), keeping boxes down to the
tracker's low threshold as the pipeline does (small faces score 0.1-0.6), the one on the drawn face (IoU >=
0.5), frame alignment (black chip borders; a face under REFINE_BELOW px aligned from landmarks found again
on an enlarged crop, as the tracking lanes do: FACEPIPE_REFINE_BELOW=0 for the frame's own), the embedder.
One JSON line per size, "full" first:

    .venv/bin/python testbench/eval_identification.py --images ../shared/data/identities --enroll 1 \
        --probe-face-px 30 40 50 60 80
    FACEPIPE_DET_SIZE=1280 .venv/bin/python testbench/eval_identification.py \
        --images ../shared/data/identities --enroll 1 --probe-face-px 30 40 50 60 80

Per size: detected (share of probe photos whose drawn face was found), genuine_median (a found probe's score
against its own person), impostor_at_far_1e-2 / 1e-3 (the stranger score that many strangers reach: the
threshold that far would need), identified / strangers_accepted at the threshold, identified_at_far_*.
Rates are over the probes found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.errors import UserError  # noqa: E402
from app.inference.spec import EMBEDDER_KINDS  # noqa: E402


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--images",
        type=Path,
        action="append",
        required=True,
        help="folder of people (one sub-folder each) or of such sets; repeatable",
    )
    parser.add_argument("--enroll", type=int, default=1, help="photos enrolled per person (K)")
    parser.add_argument("--splits", type=int, default=20, help="random enrol/stranger splits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits")
    parser.add_argument("--detector", type=Path, help="detector ONNX (default: settings)")
    parser.add_argument("--embedder", type=Path, help="embedder ONNX (default: settings)")
    parser.add_argument("--kind", choices=EMBEDDER_KINDS, help="embedder kind")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (0 = auto)")
    parser.add_argument(
        "--flip", action="store_true", help="also embed the mirrored chip and average (test-time flip)"
    )
    parser.add_argument(
        "--fuse",
        type=Path,
        action="append",
        default=[],
        help="another embedder ONNX to fuse (repeatable): one the project knows (dlib, MobileFaceNet, "
        "ArcFace: each gets its own chip and scaling) or an NHWC graph from testbench/tfjs_to_onnx.py (BGR "
        "0..255, e.g. faceres); score = (1 - sum w) cos(embedder) + sum w_i cos(fused_i); measure with the "
        "identified_at_far_* keys",
    )
    parser.add_argument(
        "--fuse-weight", type=float, action="append", default=[], help="w of each --fuse, in order (0.3)"
    )
    parser.add_argument(
        "--fuse-scale",
        type=float,
        default=0.75,
        help="face scale in the chip of NHWC --fuse graphs: the ArcFace template shrunk about the centre",
    )
    return parser


def fuse_weights(models: list[Path], weights: list[float]) -> list[float]:
    """One weight per fused model (0.3 when none is given); their sum must leave the embedder a share."""
    if not weights:
        weights = [0.3] * len(models)
    if len(weights) != len(models):
        raise UserError(f"give one --fuse-weight per --fuse: {len(models)} models, {len(weights)} weights")
    if any(not 0.0 <= w <= 1.0 for w in weights) or sum(weights) > 1.0 + 1e-9:
        raise UserError(f"--fuse-weight values must be in 0..1 and sum to at most 1, got {weights}")
    return weights


def chip_embedder(model, spec, flip: bool, scale: float):
    """(image, (1,5,2) landmarks) -> unit vector for one embedder, and the vector's size.

    With a `spec` (an embedder the project knows) its own alignment and scaling are used; without one the
    model is a TF.js graph converted by testbench/tfjs_to_onnx.py (NHWC input) and is fed BGR 0..255 chips
    of the ArcFace template shrunk to `scale`, warped with replicated borders.
    """
    import cv2
    import numpy as np

    from app.inference.spec import ARCFACE_TEMPLATE, l2_normalize
    from app.vision.alignment import align_faces, estimate_similarities

    size = int(model.inputs[0].shape[1]) if spec is None else 0
    template = (ARCFACE_TEMPLATE - 56.0) * (scale * size / 112.0) + size / 2.0

    def embed(image, landmarks):
        if spec is None:
            matrix = estimate_similarities(landmarks, template)[0]
            chips = cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)[None]
        else:
            chips = align_faces(image, landmarks, spec)
        if flip:
            chips = np.concatenate([chips, chips[:, :, ::-1]])
        x = chips.astype(np.float32) if spec is None else spec.preprocess(np.ascontiguousarray(chips))
        out = l2_normalize(np.asarray(model.run(x)[0]).reshape(len(chips), -1))
        return l2_normalize(out.mean(axis=0))

    if spec is not None:
        return embed, spec.dim
    return embed, int(model.run(np.zeros((1, size, size, 3), np.float32))[0].size)


def load_chip_embedder(path: Path, threads: int | None, flip: bool, scale: float):
    """chip_embedder for a file: NHWC input = a converted TF.js graph, else a kind the project knows."""
    from app.inference.backend import load_model
    from app.inference.spec import embedder_spec_for

    model = load_model(path, "onnxruntime", threads)
    shape = model.inputs[0].shape
    nhwc = len(shape) == 4 and shape[-1] == 3 and isinstance(shape[1], int)
    return chip_embedder(model, None if nhwc else embedder_spec_for(path, "auto", model), flip, scale)


def fused_embedder(analyzer, args: argparse.Namespace):
    """Largest face -> [sqrt(w_0) unit(first), sqrt(w_1) unit(second), ...]: cosine = the weighted sum."""
    import numpy as np

    from app.vision.image_io import read_image

    weights = fuse_weights(args.fuse, args.fuse_weight)
    threads = analyzer.settings.threads
    parts = [chip_embedder(analyzer.embedder, analyzer.spec, args.flip, args.fuse_scale)]
    parts += [load_chip_embedder(path, threads, args.flip, args.fuse_scale) for path in args.fuse]
    scales = np.sqrt([1.0 - sum(weights), *weights])

    def embed(path: Path):
        image = read_image(path)
        detections = analyzer.detect_photo(image)
        index = detections.largest()
        if index is None:
            return None
        landmarks = detections.landmarks[index : index + 1]
        vectors = [embed_one(image, landmarks) for embed_one, _ in parts]
        return np.concatenate([k * v for k, v in zip(scales, vectors, strict=True)])

    return embed, sum(dim for _, dim in parts), weights


def load_analyzer(args: argparse.Namespace):
    """The FaceAnalyzer of the settings' models, as overridden by args."""
    from app.config import load_settings
    from app.recognition.analyzer import FaceAnalyzer

    settings = load_settings(
        {
            "detector_model": args.detector,
            "embedder_model": args.embedder,
            "embedder": args.kind,
            "threads": args.threads,
            "match_threshold": getattr(args, "threshold", None),
        }
    )
    return FaceAnalyzer(settings)


def load_faces(args: argparse.Namespace, analyzer=None):
    """(LabelledFaces, EmbedderSpec) for the photo folders in args, with the settings' models."""
    from app.recognition.calibration import embed_folders, largest_face_embedder

    analyzer = load_analyzer(args) if analyzer is None else analyzer
    spec = analyzer.spec
    if getattr(args, "fuse", None):
        import dataclasses

        embed, dim, _ = fused_embedder(analyzer, args)
        threshold = getattr(args, "threshold", None)
        threshold = spec.threshold if threshold is None else threshold
        model_id = "+".join([spec.model_id, *(path.stem for path in args.fuse)])
        fused = dataclasses.replace(spec, metric="cosine", dim=dim, model_id=model_id, threshold=threshold)
        return embed_folders(args.images, embed, dim), fused
    return embed_folders(args.images, largest_face_embedder(analyzer, args.flip), spec.dim), spec


def drawn_probes(analyzer, sources: list[Path], face_px: float, frame_wh: tuple[int, int], seed: int = 0):
    """(N, dim) embeddings of each photo drawn with its face `face_px` high at the centre of a `frame_wh`
    frame of the scenarios' background (seeded), through the video path; NaN rows where the drawn face was
    not detected (no detection at IoU >= 0.5 with its ground-truth box)."""
    import numpy as np

    from app.demo import Actor, Keyframe, Scenario, render
    from app.demo.face_locator import RetinaFaceLocator
    from app.demo.sprites import cut_sprite, locate_photo
    from app.tracking.matching import box_iou

    locator = RetinaFaceLocator()  # the scenarios place their sprites with this one (app.demo.render)
    out = np.full((len(sources), analyzer.spec.dim), np.nan, np.float32)
    face_h = face_px / frame_wh[1]
    for row, path in enumerate(sources):
        image, face, truth = locate_photo(path, locator)
        sprite = cut_sprite(image, face, truth=truth)
        keyframes = (Keyframe(0.0, 0.5, 0.5, face_h), Keyframe(1.0, 0.5, 0.5, face_h))
        actor = Actor(id=0, label="probe", image=Path(path), keyframes=keyframes)
        scenario = Scenario(size=frame_wh, fps=1.0, n_frames=1, actors=(actor,), seed=seed)
        frame, truth_faces = next(iter(render(scenario, sprites={0: sprite})))
        if not truth_faces:
            continue
        found = analyzer.detect(frame)
        if not len(found):
            continue
        iou = box_iou(np.asarray([truth_faces[0].box], np.float32), found.boxes)[0]
        best = int(np.argmax(iou))
        if iou[best] >= 0.5:
            out[row] = analyzer.embed(frame, found.landmarks[best : best + 1], found.boxes[best : best + 1])[
                0
            ]
    return out


def parse_frame(text: str) -> tuple[int, int]:
    """--frame WxH as (width, height), or a one-line UserError."""
    from app.demo import parse_size

    try:
        width, height = parse_size(text)
    except ValueError:
        raise UserError(f"--frame {text!r} is not WIDTHxHEIGHT; use e.g. --frame 1280x720") from None
    if min(width, height) < 64:
        raise UserError(f"--frame {text!r} is too small; use e.g. --frame 1280x720")
    return width, height


def size_report(faces, spec, args: argparse.Namespace, analyzer) -> int:
    """One JSON line per probe face size (full-size photos first): see the module docstring."""
    import numpy as np

    from app.recognition.calibration import identification_report, split_scores, threshold_at_far

    frame_wh = parse_frame(args.frame)
    rows: list[tuple[str | float, np.ndarray | None]] = [("full", None)]
    rows += [(px, drawn_probes(analyzer, faces.sources, px, frame_wh)) for px in args.probe_face_px]
    for face_px, probes in rows:
        scores = split_scores(faces, args.enroll, args.splits, args.seed, spec.metric, probes=probes)
        report = identification_report(scores, spec.threshold, args.enroll).as_json()
        found = 1.0 if probes is None else float(np.mean(~np.isnan(probes).any(axis=1)))
        line = {
            "face_px": face_px,
            "det_size": analyzer.settings.det_size,
            "detected": round(found, 4),
            "genuine_median": round(float(np.median(scores.genuine_own)), 4),
            "impostor_at_far_1e-2": round(threshold_at_far(scores.stranger_best, 1e-2), 4),
            "impostor_at_far_1e-3": round(threshold_at_far(scores.stranger_best, 1e-3), 4),
        }
        line.update(report)
        print(json.dumps(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, help="threshold to report (default: the shipped one)")
    parser.add_argument("--per-set", action="store_true", help="also report each set on its own")
    parser.add_argument(
        "--probe-face-px",
        type=float,
        nargs="+",
        default=[],
        help="also probe with the photos drawn in a frame with a face this many px high (see above)",
    )
    parser.add_argument("--frame", default="1280x720", help="frame size for --probe-face-px (WxH)")
    args = parser.parse_args(argv)
    from app.recognition.calibration import identification_report, split_scores

    try:
        if args.probe_face_px:
            if args.fuse:
                raise UserError("--probe-face-px measures the embedder alone; leave out --fuse")
            from app.recognition.analyzer import FaceAnalyzer
            from app.tracking import TrackerConfig

            parse_frame(args.frame)  # before the photos are embedded
            analyzer = load_analyzer(args)
            faces, spec = load_faces(args, analyzer)
            frames = FaceAnalyzer(analyzer.settings.replace(det_threshold=TrackerConfig().low_thresh))
            return size_report(faces, spec, args, frames)
        faces, spec = load_faces(args)
        groups = [("all", faces)]
        if args.per_set:
            groups += [(name, faces.of_set(name)) for name in faces.sets()]
        reports = {}
        for name, group in groups:
            try:
                scores = split_scores(group, args.enroll, args.splits, args.seed, spec.metric)
            except UserError as exc:
                if name == "all":
                    raise
                print(f"{name}: skipped ({exc})")
                continue
            reports[name] = identification_report(scores, spec.threshold, args.enroll)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in faces.no_face:
        print(f"warning: no face found in {path}; left out")
    print(
        f"model {spec.model_id} ({spec.metric}); {len(faces.people)} faces of {len(set(faces.people))} people"
    )
    for name, report in reports.items():
        line = report.as_json()
        far2, far3, t2 = (
            line["identified_at_far_1e-2"],
            line["identified_at_far_1e-3"],
            line["threshold_at_far_1e-2"],
        )
        print(
            f"{name:>12}: at {report.threshold:.3f} identified {report.identified:.3f}, strangers accepted "
            f"{report.strangers_accepted:.4f}; at FAR 1e-2 {far2:.3f} (thr {t2:.3f}),"
            f" 1e-3 {far3:.3f}; rank-1 {report.rank1:.3f}; {report.people} people, {report.probes} probes"
        )
    line = reports["all"].as_json()
    line.update(model_id=spec.model_id, flip=bool(args.flip), no_face=len(faces.no_face))
    if args.fuse:
        line["fuse_weights"] = fuse_weights(args.fuse, args.fuse_weight)
    if args.per_set:
        line["per_set"] = {
            name: {k: v for k, v in r.as_json().items() if k in ("identified", "strangers_accepted", "rank1")}
            for name, r in reports.items()
            if name != "all"
        }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
