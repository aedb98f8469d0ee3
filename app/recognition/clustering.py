"""Group kept unknown faces into candidate people: DBSCAN on the faces, then one cluster per sighting.

DBSCAN (scikit-learn) runs on every kept face's embedding: a face with `min_samples` faces (itself included)
within `eps` is a core; cores within `eps` of each other chain into one cluster; the rest is noise. A
sighting (one track, a few faces of one person) then joins the cluster most of its faces fell in; a
sighting whose faces are all noise is a group of its own. So a cluster is always whole sightings, and a
cluster of one sighting (a passer-by seen once) is told apart from a repeat visitor by its `visits`.

Parameters per embedder (by its metric: dlib ResNet is Euclidean, the ArcFace models cosine), measured with
`testbench/eval_clustering.py` on `../shared/data/identities` (each photo one sighting):
- dlib ResNet (Euclidean distance): eps 0.48, min_samples 2. Purity is 1.00 on every set up to eps 0.48,
  0.99 on bbt at 0.50 and falls off a cliff after (0.81 at 0.52, 0.63 at 0.54: DBSCAN chains look-alikes
  together); 0.48 keeps a step from that edge. Completeness at 0.48: bbt 0.85, johns 1.00, human 0.82,
  families 1.00, walking-dead 0.75 (single photos far from the rest stay alone; with several faces per
  sighting from video, as the pipeline keeps them, they chain better). min_samples 1 and 2 agree; 3 loses
  completeness on the small sets. The gallery's match threshold is a distance of 0.565 (similarity 0.435).
- ArcFace (cosine distance = 1 - cosine similarity): eps 0.55, min_samples 2: its match threshold (cosine
  similarity 0.35, distance 0.65) less the same relative allowance as dlib's; not measured (no ArcFace
  weights on the test machine): run the testbench with EMBEDDER_MODEL set to measure it.

Cluster ids are kept between runs (`assign_ids`): a new cluster takes the id most of its sightings had
before, so `unknowns list` then `unknowns name ID` refer to the same people even if faces came in between.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.inference.spec import normalize_for


@dataclass(frozen=True)
class ClusterParams:
    eps: float  # DBSCAN neighbourhood, in the embedder's distance (Euclidean, or 1 - cosine similarity)
    min_samples: int  # faces within eps (itself included) that make a core face


CLUSTER_PARAMS = {
    "euclidean": ClusterParams(eps=0.48, min_samples=2),
    "cosine": ClusterParams(eps=0.55, min_samples=2),
}


def params_for(metric: str) -> ClusterParams:
    try:
        return CLUSTER_PARAMS[metric]
    except KeyError:
        raise ValueError(
            f"no clustering parameters for metric {metric!r} (have {sorted(CLUSTER_PARAMS)})"
        ) from None


def cluster_faces(vectors: np.ndarray, metric: str, params: ClusterParams | None = None) -> np.ndarray:
    """DBSCAN label per face (-1 = noise) of (N, D) embeddings."""
    from sklearn.cluster import DBSCAN  # scikit-learn is slow to import; only clustering needs it

    params = params or params_for(metric)
    array = np.asarray(vectors, np.float32)
    if len(array) == 0:
        return np.zeros(0, np.int64)
    if metric == "cosine":
        # On unit vectors, Euclidean distance = sqrt(2 * cosine distance): the same neighbourhoods, and the
        # tree/brute Euclidean code paths of scikit-learn are faster than its cosine one.
        array = normalize_for(array, metric)
        eps = float(np.sqrt(2.0 * params.eps))
    else:
        eps = params.eps
    model = DBSCAN(eps=eps, min_samples=params.min_samples, metric="euclidean", n_jobs=1)
    return model.fit_predict(array).astype(np.int64)


def group_sightings(
    sightings: Sequence[str], vectors: np.ndarray, metric: str, params: ClusterParams | None = None
) -> list[list[str]]:
    """Groups of sighting ids (one per candidate person), from each face's sighting and embedding.

    Groups come largest first (by faces), then by first appearance; sightings inside a group in order.
    """
    labels = cluster_faces(vectors, metric, params)
    votes: dict[str, Counter[int]] = {}
    faces: Counter[str] = Counter()
    order: dict[str, int] = {}
    for index, (sighting, label) in enumerate(zip(sightings, labels, strict=True)):
        order.setdefault(sighting, index)
        faces[sighting] += 1
        counter = votes.setdefault(sighting, Counter())
        if label >= 0:
            counter[int(label)] += 1
    groups: dict[object, list[str]] = {}
    for sighting in sorted(votes, key=order.__getitem__):
        counter = votes[sighting]
        # ties go to the lower label (found first): deterministic for the same input
        key: object = min(counter, key=lambda lab: (-counter[lab], lab)) if counter else ("alone", sighting)
        groups.setdefault(key, []).append(sighting)
    return sorted(groups.values(), key=lambda g: (-sum(faces[s] for s in g), order[g[0]]))


def assign_ids(
    groups: Sequence[Sequence[str]], previous: Mapping[str, int], next_id: int
) -> tuple[dict[str, int], int]:
    """Cluster id per sighting, keeping earlier ids: a group takes the id most of its sightings had (each id
    once, larger groups first); a group with no earlier id gets the next free one. Returns (ids, next_id)."""
    taken: set[int] = set()
    out: dict[str, int] = {}
    for group in groups:
        old = Counter(previous[s] for s in group if s in previous)
        choice = next((cid for cid, _ in old.most_common() if cid not in taken), None)
        if choice is None:
            choice = next_id
            next_id += 1
        taken.add(choice)
        for sighting in group:
            out[sighting] = choice
    return out, next_id


def purity_completeness(truth: Sequence[object], clusters: Sequence[object]) -> tuple[float, float]:
    """Purity (share of items in their cluster's majority identity) and completeness (per identity, the share
    of its items in its largest cluster; averaged over identities)."""
    if not truth:
        return 1.0, 1.0
    by_cluster: dict[object, Counter[object]] = {}
    by_truth: dict[object, Counter[object]] = {}
    for t, c in zip(truth, clusters, strict=True):
        by_cluster.setdefault(c, Counter())[t] += 1
        by_truth.setdefault(t, Counter())[c] += 1
    purity = sum(max(counter.values()) for counter in by_cluster.values()) / len(truth)
    completeness = [max(counter.values()) / sum(counter.values()) for counter in by_truth.values()]
    return float(purity), float(np.mean(completeness))
