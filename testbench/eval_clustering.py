"""Clustering of unknown faces, measured on the identity-labelled photo sets: each photo one sighting.

    .venv/bin/python testbench/eval_clustering.py                        # every set, shipped parameters
    .venv/bin/python testbench/eval_clustering.py --sweep                # eps x min_samples grid per set
    .venv/bin/python testbench/eval_clustering.py --sets bbt johns --eps 0.40

Each photo's largest face is embedded with the configured embedder (default dlib ResNet) and treated as one
sighting of one face, as the pipeline's unknowns store would hold it; `app.recognition.clustering` groups
them. Printed per set: purity (share of photos in their cluster's majority person), completeness (per
person, share of their photos in their largest cluster, averaged), clusters with two or more sightings,
sightings left alone. Also the time to cluster 10,000 faces (the set's embeddings repeated with small
noise). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import load_settings  # noqa: E402
from app.recognition.analyzer import FaceAnalyzer  # noqa: E402
from app.recognition.clustering import (  # noqa: E402
    ClusterParams,
    group_sightings,
    params_for,
    purity_completeness,
)

IDENTITIES = REPO.parent / "shared" / "data" / "identities"
SETS = ("bbt", "johns", "human", "families", "walking-dead")
SUFFIXES = (".jpg", ".jpeg", ".png")


def embed_set(analyzer: FaceAnalyzer, folder: Path) -> tuple[list[str], np.ndarray]:
    people, vectors = [], []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        for photo in sorted(p for p in person.iterdir() if p.suffix.lower() in SUFFIXES):
            image = cv2.imread(str(photo))
            if image is None:
                continue
            dets = analyzer.detect_photo(image)
            best = dets.largest()
            if best is None:
                continue
            vectors.append(analyzer.embed_photo(image, dets.landmarks[best][None])[0])
            people.append(person.name)
    return people, np.stack(vectors)


def evaluate(people: list[str], vectors: np.ndarray, metric: str, params: ClusterParams) -> dict:
    sightings = [f"photo{i}" for i in range(len(people))]
    groups = group_sightings(sightings, vectors, metric, params)
    cluster_of = {s: k for k, group in enumerate(groups) for s in group}
    purity, completeness = purity_completeness(people, [cluster_of[s] for s in sightings])
    return {
        "purity": round(purity, 3),
        "completeness": round(completeness, 3),
        "clusters": sum(1 for g in groups if len(g) > 1),
        "alone": sum(1 for g in groups if len(g) == 1),
        "people": len(set(people)),
        "photos": len(people),
    }


def time_10k(vectors: np.ndarray, metric: str, params: ClusterParams, rng: np.random.Generator) -> float:
    reps = int(np.ceil(10_000 / len(vectors)))
    big = np.repeat(vectors, reps, axis=0)[:10_000]
    big = big + rng.normal(0, 0.01, big.shape).astype(np.float32)
    sightings = [f"s{i // 5}" for i in range(len(big))]
    start = time.perf_counter()
    group_sightings(sightings, big, metric, params)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--eps", type=float, help="DBSCAN eps (default: the embedder's shipped value)")
    parser.add_argument("--min-samples", type=int, help="DBSCAN min_samples (default: shipped)")
    parser.add_argument("--sweep", action="store_true", help="print a grid of eps and min_samples per set")
    args = parser.parse_args(argv)

    analyzer = FaceAnalyzer(load_settings(env_file=None))
    metric = analyzer.spec.metric
    shipped = params_for(metric)
    params = ClusterParams(
        eps=shipped.eps if args.eps is None else args.eps,
        min_samples=shipped.min_samples if args.min_samples is None else args.min_samples,
    )
    embedded = {name: embed_set(analyzer, IDENTITIES / name) for name in args.sets}
    results = {}
    for name, (people, vectors) in embedded.items():
        result = evaluate(people, vectors, metric, params)
        results[name] = result
        print(f"{name:<13} purity {result['purity']:.3f}  completeness {result['completeness']:.3f}  "
              f"clusters {result['clusters']:>3}  alone {result['alone']:>3}  "
              f"({result['people']} people, {result['photos']} photos)")  # fmt: skip
    if args.sweep:
        for name, (people, vectors) in embedded.items():
            for min_samples in (1, 2, 3):
                row = []
                for eps in (0.38, 0.42, 0.46, 0.48, 0.50, 0.52, 0.54, 0.56):
                    r = evaluate(people, vectors, metric, ClusterParams(eps, min_samples))
                    row.append(f"{eps:.2f}:{r['purity']:.2f}/{r['completeness']:.2f}")
                print(f"sweep {name:<13} min_samples {min_samples}  " + "  ".join(row))
    all_vectors = np.concatenate([v for _, v in embedded.values()])
    seconds = time_10k(all_vectors, metric, params, np.random.default_rng(0))
    print(f"clustering 10,000 faces: {seconds:.2f} s")
    print(
        json.dumps(
            {
                "embedder": analyzer.spec.model_id,
                "metric": metric,
                "eps": params.eps,
                "min_samples": params.min_samples,
                "sets": results,
                "seconds_10k_faces": round(seconds, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
