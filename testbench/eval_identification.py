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
    parser.add_argument("--kind", choices=("auto", "dlib", "arcface"), help="embedder kind")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (0 = auto)")
    parser.add_argument(
        "--flip", action="store_true", help="also embed the mirrored chip and average (test-time flip)"
    )
    return parser


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
