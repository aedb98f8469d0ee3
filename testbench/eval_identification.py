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
    if getattr(args, "fuse", None):
        import dataclasses

        embed, dim, _ = fused_embedder(analyzer, args)
        threshold = getattr(args, "threshold", None)
        threshold = spec.threshold if threshold is None else threshold
        model_id = "+".join([spec.model_id, *(path.stem for path in args.fuse)])
        fused = dataclasses.replace(spec, metric="cosine", dim=dim, model_id=model_id, threshold=threshold)
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
