"""Face verification on a pairs CSV: detect (largest face), align, embed, compare; accuracy, AUC, TAR@FAR.

Pairs CSV columns: file_x,file_y,Decision (Yes = same person, No = different), paths relative to --images.
An image with no detected face makes its pairs count as "different" (similarity -inf) and is reported.

    .venv/bin/python testbench/make_pairs.py --out data/pairs_knn.csv
    .venv/bin/python testbench/eval_verification.py --pairs data/pairs_knn.csv --images ../shared/data/faces

Prints human-readable figures, then one JSON line last: pairs, accuracy, threshold (the shipped one),
best_accuracy, best_threshold, auc, tar_at_far_1e-2 (+ a few descriptive keys). Thresholds are similarities.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.errors import UserError  # noqa: E402


@dataclass
class Pair:
    file_x: str
    file_y: str
    same: bool


@dataclass
class VerificationReport:
    pairs: int
    positives: int
    negatives: int
    accuracy: float
    threshold: float
    best_accuracy: float
    best_threshold: float
    best_threshold_range: tuple[float, float]
    auc: float
    tar_at_far: float
    far_target: float


def read_pairs(path: Path) -> list[Pair]:
    if not path.is_file():
        raise UserError(f"pairs file {path} does not exist; make one with testbench/make_pairs.py")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs = []
    for line, row in enumerate(rows, start=2):
        try:
            decision = row["Decision"].strip().lower()
            x, y = row["file_x"].strip(), row["file_y"].strip()
        except (KeyError, AttributeError):
            raise UserError(f"{path}:{line}: need columns file_x,file_y,Decision") from None
        if decision not in ("yes", "no"):
            raise UserError(f"{path}:{line}: Decision must be Yes or No, got {row['Decision']!r}")
        pairs.append(Pair(x, y, decision == "yes"))
    if not pairs:
        raise UserError(f"{path} has no pairs; make one with testbench/make_pairs.py")
    return pairs


def accuracy_at(similarity: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided right when "same" means similarity >= threshold."""
    return float(np.mean((similarity >= threshold) == same))


def best_threshold(
    similarity: np.ndarray, same: np.ndarray, prefer: float
) -> tuple[float, float, tuple[float, float]]:
    """(best accuracy, threshold, (lo, hi)): every threshold t with lo < t <= hi reaches the best accuracy.

    Accuracy only changes at the observed similarities, so candidates are the midpoints between consecutive
    distinct values (plus one below and one above all). Among the best, the one closest to `prefer` (the
    shipped threshold) is returned, so ties do not move it for no reason; (lo, hi) is that candidate's
    interval.
    """
    finite = np.unique(similarity[np.isfinite(similarity)])
    if finite.size == 0:
        return accuracy_at(similarity, same, prefer), prefer, (prefer, prefer)
    edges = np.concatenate([[-np.inf], finite, [np.inf]])
    candidates = np.concatenate([[finite[0] - 1e-3], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1e-3]])
    predicted = similarity[None, :] >= candidates[:, None]
    accuracies = (predicted == same[None, :]).mean(axis=1)
    winners = np.flatnonzero(accuracies == accuracies.max())
    k = int(winners[np.argmin(np.abs(candidates[winners] - prefer))])
    return float(accuracies[k]), float(candidates[k]), (float(edges[k]), float(edges[k + 1]))


def roc_auc(similarity: np.ndarray, same: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney rank statistic (ties count one half)."""
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    scores = np.where(np.isfinite(similarity), similarity, -1e9)
    ranks = rankdata(scores)
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tar_at_far(similarity: np.ndarray, same: np.ndarray, far: float = 1e-2) -> float:
    """True accept rate at the strictest threshold whose false accept rate is at most `far`.

    With n negatives at most floor(far * n) of them may be accepted; positives must score strictly above the
    next negative. With fewer than 1/far negatives that means above every negative.
    """
    negatives = np.sort(similarity[~same])[::-1]
    positives = similarity[same]
    if positives.size == 0:
        return float("nan")
    allowed = int(np.floor(far * negatives.size))
    if allowed >= negatives.size:
        return 1.0
    return float(np.mean(positives > negatives[allowed]))


def evaluate(
    similarity: np.ndarray, same: np.ndarray, threshold: float, far: float = 1e-2
) -> VerificationReport:
    best_acc, best_thr, best_range = best_threshold(similarity, same, threshold)
    return VerificationReport(
        pairs=int(same.size),
        positives=int(same.sum()),
        negatives=int((~same).sum()),
        accuracy=accuracy_at(similarity, same, threshold),
        threshold=float(threshold),
        best_accuracy=best_acc,
        best_threshold=best_thr,
        best_threshold_range=best_range,
        auc=roc_auc(similarity, same),
        tar_at_far=tar_at_far(similarity, same, far),
        far_target=far,
    )


def embed_images(analyzer, images_dir: Path, names: list[str]) -> dict[str, np.ndarray | None]:
    """Embedding of the largest face of each image (None when no face is found)."""
    from app.vision.image_io import read_image

    embeddings: dict[str, np.ndarray | None] = {}
    for name in names:
        image = read_image(images_dir / name)
        detections = analyzer.detect_photo(image)
        index = detections.largest()
        if index is None:
            embeddings[name] = None
            continue
        embeddings[name] = analyzer.embed_photo(image, detections.landmarks[index : index + 1])[0]
    return embeddings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, required=True, help="CSV with file_x,file_y,Decision")
    parser.add_argument("--images", type=Path, required=True, help="folder the CSV paths are relative to")
    parser.add_argument("--detector", type=Path, help="detector ONNX (default: settings)")
    parser.add_argument("--embedder", type=Path, help="embedder ONNX (default: settings)")
    parser.add_argument(
        "--kind", choices=("auto", "dlib", "arcface"), help="embedder kind (default: settings)"
    )
    parser.add_argument(
        "--threshold", type=float, help="similarity threshold to report (default: the shipped one)"
    )
    parser.add_argument("--det-size", type=int, help="detector input side")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (0 = auto)")
    parser.add_argument("--show", type=int, default=5, help="list this many hardest pairs of each kind")
    args = parser.parse_args(argv)
    try:
        from app.config import load_settings
        from app.recognition.analyzer import FaceAnalyzer

        overrides = {
            "detector_model": args.detector,
            "embedder_model": args.embedder,
            "embedder": args.kind,
            "det_size": args.det_size,
            "threads": args.threads,
            "match_threshold": args.threshold,
        }
        settings = load_settings(overrides)
        pairs = read_pairs(args.pairs)
        if not args.images.is_dir():
            raise UserError(f"images folder {args.images} does not exist; pass --images DIR")
        analyzer = FaceAnalyzer(settings)
        names = sorted({p.file_x for p in pairs} | {p.file_y for p in pairs})
        embeddings = embed_images(analyzer, args.images, names)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    spec = analyzer.spec
    missing = [n for n, e in embeddings.items() if e is None]
    for name in missing:
        print(f"warning: no face found in {name}; its pairs count as 'different'")
    similarity = np.full(len(pairs), -np.inf)
    for i, pair in enumerate(pairs):
        ex, ey = embeddings[pair.file_x], embeddings[pair.file_y]
        if ex is not None and ey is not None:
            similarity[i] = float(spec.similarity(ex[None], ey[None])[0, 0])
    same = np.array([p.same for p in pairs])
    report = evaluate(similarity, same, spec.threshold)

    unit = "1 - euclidean distance" if spec.metric == "euclidean" else "cosine similarity"
    print(f"model {spec.model_id} ({spec.metric}); similarity = {unit}")
    print(f"pairs {report.pairs}: {report.positives} same, {report.negatives} different; {len(names)} images")
    pos, neg = similarity[same], similarity[~same]
    if pos.size and neg.size:
        print(
            f"same-person similarity: min {pos.min():.3f} median {np.median(pos):.3f}; "
            f"different: median {np.median(neg):.3f} max {neg.max():.3f}"
        )
    order = np.argsort(similarity)
    hardest_same = [i for i in order if same[i]][: args.show]
    hardest_diff = [i for i in order[::-1] if not same[i]][: args.show]
    for label, rows in (("hardest same", hardest_same), ("hardest different", hardest_diff)):
        for i in rows:
            print(f"  {label}: {similarity[i]:.3f} {pairs[i].file_x} ~ {pairs[i].file_y}")
    lo, hi = report.best_threshold_range
    print(f"accuracy at shipped threshold {report.threshold:.3f}: {report.accuracy:.4f}")
    best = f"best accuracy {report.best_accuracy:.4f} at {report.best_threshold:.3f}"
    print(f"{best} (any threshold in ({lo:.3f}, {hi:.3f}])")
    print(f"ROC AUC {report.auc:.4f}; TAR at FAR {report.far_target:g}: {report.tar_at_far:.4f}")
    line = {
        "pairs": report.pairs,
        "accuracy": round(report.accuracy, 4),
        "threshold": round(report.threshold, 4),
        "best_accuracy": round(report.best_accuracy, 4),
        "best_threshold": round(report.best_threshold, 4),
        "auc": round(report.auc, 4),
        "tar_at_far_1e-2": round(report.tar_at_far, 4),
        "positives": report.positives,
        "negatives": report.negatives,
        "no_face": len(missing),
        "model_id": spec.model_id,
        "metric": spec.metric,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
