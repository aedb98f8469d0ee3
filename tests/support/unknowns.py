"""Helpers for the unknown-faces tests: synthetic sightings of a few people in a real store."""

from __future__ import annotations

import numpy as np

from app.gallery.unknowns import KeptFace, Sighting

DIM = 128  # the dlib embedder's size: the tests' stores take its real spec


def person_centres(count: int, seed: int = 0) -> np.ndarray:
    """Centres far apart in dlib's units (pairwise distance ~1.0, against a cluster eps of 0.48)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (count, DIM))
    return (centres / np.linalg.norm(centres, axis=1, keepdims=True) * 0.7).astype(np.float32)


def sighting_of(
    centre: np.ndarray, faces: int, seen: float, rng: np.random.Generator, track: int = 1
) -> Sighting:
    """A visit: faces near `centre` (spread ~0.1, as one track's views of a person), a crop each."""
    kept = []
    for i in range(faces):
        vector = centre + rng.normal(0, 0.1 / np.sqrt(DIM), DIM).astype(np.float32)
        crop = np.full((150, 150, 3), 40 + 20 * i, np.uint8)
        kept.append(KeptFace(vector, crop, quality=0.9 - 0.01 * i, det_score=0.99, seen=seen + i, frame=i))
    return Sighting(camera="cam1", track=track, faces=kept)
