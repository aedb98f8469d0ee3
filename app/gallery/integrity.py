"""A gallery that proves it is intact: a checksum of its points, checked cheaply on open and fully on demand.

Every change to the embedded gallery records, with the change itself (see `edge.py`), the number of points,
a SHA-256 over every point (id, name, vector bytes) and the ids of a few points spread over the gallery with
a checksum of just those. Opening compares the count and reads the sample back (a few ms, whatever the
size): a truncated or zeroed vector or payload file fails it. `verify_gallery` reads everything, vectors
and payloads apart, and names the part that is damaged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.errors import UserError

SAMPLE_SIZE = 8
RESTORE_HINT = (
    "restore a backup (python -m app.enroll restore DIR), or move the gallery folder away and re-enroll"
)


class GalleryDamagedError(UserError):
    """The gallery's storage does not hold what its record says; the message names the part and the fix."""


def damaged(where: str, part: str, detail: str) -> GalleryDamagedError:
    return GalleryDamagedError(f"gallery at {where} is damaged: {part} ({detail}); {RESTORE_HINT}")


Point = tuple[Any, Mapping[str, Any] | None, Any]  # (id, payload, vector)


def _digest(points: Iterable[Point]) -> str:
    h = hashlib.sha256()
    for point_id, payload, vector in sorted(points, key=lambda p: str(p[0])):
        name = str((payload or {}).get("name", ""))
        h.update(str(point_id).encode() + b"\0" + name.encode() + b"\0")
        h.update(np.asarray(vector, dtype=np.float32).tobytes())
    return h.hexdigest()


def _sample_ids(ids: list[str]) -> list[str]:
    if not ids:
        return []
    picks = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), SAMPLE_SIZE)).round().astype(int))
    return [ids[i] for i in picks]


@dataclass(frozen=True)
class IntegrityRecord:
    count: int
    digest: str
    sample_ids: list[str]
    sample_digest: str

    @classmethod
    def of(cls, points: Iterable[Point]) -> IntegrityRecord:
        every = [(str(i), p, v) for i, p, v in points]
        by_id = {i: (i, p, v) for i, p, v in every}
        sample = _sample_ids(sorted(by_id))
        return cls(
            count=len(every),
            digest=_digest(every),
            sample_ids=sample,
            sample_digest=_digest(by_id[i] for i in sample),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> IntegrityRecord | None:
        if not data:
            return None
        try:
            return cls(
                count=int(data["count"]),
                digest=str(data["digest"]),
                sample_ids=[str(i) for i in data["sample_ids"]],
                sample_digest=str(data["sample_digest"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_count(self, count: int, where: str) -> None:
        if count != self.count:
            raise damaged(where, "point count", f"{count} embeddings stored, {self.count} recorded")

    def check_sample(self, points: Iterable[Point], where: str) -> None:
        found = [(str(i), p, v) for i, p, v in points]
        if len(found) != len(self.sample_ids):
            raise damaged(
                where, "points", f"{len(self.sample_ids) - len(found)} sampled embeddings are missing"
            )
        if _digest(found) != self.sample_digest:
            raise damaged(where, "vectors or names", "sampled embeddings differ from the recorded checksum")


def check_vector_values(points: Iterable[Point], dim: int, where: str) -> None:
    """Every vector has `dim` finite values and is not all zeros (what a zeroed file reads back as)."""
    bad = 0
    for _id, _payload, vector in points:
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (dim,) or not np.isfinite(array).all() or not array.any():
            bad += 1
    if bad:
        raise damaged(where, "vectors", f"{bad} embedding(s) are not {dim} finite, non-zero values")


@dataclass(frozen=True)
class VerifyReport:
    where: str
    count: int
    persons: int
    checksum: str  # "ok", or "not recorded" for a gallery last changed before checksums were kept

    def line(self) -> str:
        return (
            f"gallery {self.where} is intact: {self.persons} person(s), {self.count} embedding(s), "
            f"checksum {self.checksum}"
        )
