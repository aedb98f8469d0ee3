"""Grouping kept faces into people: whole sightings per cluster, stable ids, purity and completeness."""

from __future__ import annotations

import numpy as np

from app.recognition.clustering import assign_ids, group_sightings, purity_completeness
from tests.support.unknowns import person_centres, sighting_of


def _faces(visits_per_person: list[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = person_centres(len(visits_per_person), seed)
    sightings, vectors, person_of = [], [], {}
    for person, visits in enumerate(visits_per_person):
        for v in range(visits):
            s = sighting_of(centres[person], 4, 1000.0 * v, rng)
            person_of[s.id] = person
            for face in s.faces:
                sightings.append(s.id)
                vectors.append(face.vector)
    return sightings, np.stack(vectors), person_of


def test_each_repeat_visitor_gets_one_cluster_of_all_their_visits():
    sightings, vectors, person_of = _faces([3, 4, 3])
    groups = group_sightings(sightings, vectors, "euclidean")
    assert len(groups) == 3
    for group in groups:
        assert len({person_of[s] for s in group}) == 1
    assert sorted(len(g) for g in groups) == [3, 3, 4]


def test_a_single_sighting_stays_apart_from_repeat_visitors():
    sightings, vectors, person_of = _faces([3, 1])
    groups = group_sightings(sightings, vectors, "euclidean")
    assert sorted(len(g) for g in groups) == [1, 3]


def test_cluster_ids_survive_new_faces_coming_in():
    sightings, vectors, _ = _faces([3, 3])
    first, next_id = assign_ids(group_sightings(sightings, vectors, "euclidean"), {}, 1)
    more_s, more_v, _ = _faces([3, 3, 2], seed=0)  # the same two people again plus a newcomer
    groups = group_sightings(sightings + more_s, np.concatenate([vectors, more_v]), "euclidean")
    second, _ = assign_ids(groups, first, next_id)
    for sighting, cid in first.items():
        assert second[sighting] == cid
    assert set(second.values()) - set(first.values()) == {3}


def test_cosine_embeddings_cluster_like_euclidean_ones():
    sightings, vectors, person_of = _faces([3, 3])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = group_sightings(sightings, unit * 5.0, "cosine")  # scale does not matter for cosine
    assert len(groups) == 2 and all(len({person_of[s] for s in g}) == 1 for g in groups)


def test_purity_and_completeness():
    assert purity_completeness(["a", "a", "b", "b"], [1, 1, 2, 2]) == (1.0, 1.0)
    purity, completeness = purity_completeness(["a", "a", "b", "b"], [1, 1, 1, 2])
    assert purity == 0.75 and completeness == 0.75


def test_ten_thousand_faces_cluster_into_their_people():
    # How long it takes is measured by testbench/eval_clustering.py, not asserted here.
    rng = np.random.default_rng(0)
    centres = person_centres(200)
    vectors = np.repeat(centres, 50, axis=0) + rng.normal(0, 0.01, (10_000, 128)).astype(np.float32)
    sightings = [f"s{i // 5}" for i in range(10_000)]
    groups = group_sightings(sightings, vectors, "euclidean")
    assert len(groups) == 200
