"""Open-set 1:N identification on photo folders: who of the enrolled people is this, or a stranger?

Protocol (app/recognition/calibration.py): per seeded random split, half the people are enrolled with K
photos each (their other photos are probes), the rest are strangers; rates pooled over N splits.

    .venv/bin/python testbench/eval_identification.py --images ../shared/data/identities --enroll 1
    .venv/bin/python testbench/eval_identification.py --images ../shared/data/identities --enroll 3 --per-set

Prints per-set lines with --per-set, then one JSON line last (all sets pooled): identified and
strangers_accepted at the shipped threshold (or --threshold), threshold, identified_at_far_1e-2 / 1e-3
(with the thresholds there), rank1, enroll, people, probes. Thresholds are similarities.
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
        help="second embedder ONNX (NHWC 224x224 BGR 0..255, e.g. faceres from testbench/tfjs_to_onnx.py): "
        "score = (1 - w) cos(embedder) + w cos(second); measure with the identified_at_far_* keys",
    )
    parser.add_argument("--fuse-weight", type=float, default=0.3, help="w of --fuse")
    return parser


FUSE_SIZE = 224
FUSE_FACE_SCALE = 0.75  # the ArcFace template shrunk in the chip: some hair and chin, as faceres likes


def fused_embedder(analyzer, second: Path, weight: float):
    """Largest face -> [sqrt(1-w) unit(first), sqrt(w) unit(second)]: cosine of two = the weighted sum."""
    import cv2
    import numpy as np

    from app.inference.backend import load_model
    from app.inference.spec import ARCFACE_TEMPLATE, l2_normalize
    from app.vision.alignment import align_faces, estimate_similarities
    from app.vision.image_io import read_image

    if not 0.0 <= weight <= 1.0:
        raise UserError(f"--fuse-weight must be in 0..1, got {weight}")
    model = load_model(second, "onnxruntime", analyzer.settings.threads)
    template = (ARCFACE_TEMPLATE - 56.0) * (FUSE_FACE_SCALE * FUSE_SIZE / 112.0) + FUSE_SIZE / 2.0

    def embed(path: Path):
        image = read_image(path)
        detections = analyzer.detect(image)
        index = detections.largest()
        if index is None:
            return None
        landmarks = detections.landmarks[index : index + 1]
        first = analyzer.embed_chips(align_faces(image, landmarks, analyzer.spec))
        matrix = estimate_similarities(landmarks, template)[0]
        chip = cv2.warpAffine(image, matrix, (FUSE_SIZE, FUSE_SIZE), borderMode=cv2.BORDER_REPLICATE)
        other = model.run(chip[None].astype(np.float32))[0].reshape(1, -1)
        parts = [np.sqrt(1.0 - weight) * l2_normalize(first), np.sqrt(weight) * l2_normalize(other)]
        return np.concatenate(parts, axis=1)[0]

    return embed, analyzer.spec.dim + int(model.outputs[0].shape[-1] or 1024)


def load_faces(args: argparse.Namespace):
    """(LabelledFaces, EmbedderSpec) for the photo folders in args, with the settings' models."""
    from app.config import load_settings
    from app.recognition.analyzer import FaceAnalyzer
    from app.recognition.calibration import embed_folders, largest_face_embedder

    settings = load_settings(
        {
            "detector_model": args.detector,
            "embedder_model": args.embedder,
            "embedder": args.kind,
            "threads": args.threads,
            "match_threshold": getattr(args, "threshold", None),
        }
    )
    analyzer = FaceAnalyzer(settings)
    spec = analyzer.spec
    if getattr(args, "fuse", None) is not None:
        import dataclasses

        embed, dim = fused_embedder(analyzer, args.fuse, args.fuse_weight)
        threshold = spec.threshold if args.threshold is None else args.threshold
        fused = dataclasses.replace(
            spec, metric="cosine", dim=dim, model_id=f"{spec.model_id}+{args.fuse.stem}", threshold=threshold
        )
        return embed_folders(args.images, embed, dim), fused
    return embed_folders(args.images, largest_face_embedder(analyzer, args.flip), spec.dim), spec


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, help="threshold to report (default: the shipped one)")
    parser.add_argument("--per-set", action="store_true", help="also report each set on its own")
    args = parser.parse_args(argv)
    from app.recognition.calibration import identification_report, split_scores

    try:
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
    if args.fuse is not None:
        line["fuse_weight"] = args.fuse_weight
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
