"""Open-set identification on labelled photo folders, and choosing a match threshold from it.

The task the pipeline does is open-set 1:N identification: is this face one of the enrolled people, and who.
The protocol (one home for it; `testbench/eval_identification.py` and `testbench/calibrate.py` are its CLIs):

- Photos: one sub-folder per person (a "set"), or a folder of such sets; person = "<set>/<folder>". Each
  image gives the embedding of its largest face (images without a face are counted and left out).
- A split (seeded): `enroll_share` of the people who have more than `k` photos are enrolled with `k` random
  photos each, their other photos are genuine probes; everyone else (the rest, and people with `k` photos
  or fewer) is a stranger whose every photo is an impostor probe.
- A probe's score against a person is the gallery's person score over that person's enrolled photos
  (`app.gallery.base.person_similarity`: a soft maximum of the best three). A genuine probe is identified
  at threshold t when its best person is the right one and scores >= t; a stranger is accepted when anyone
  scores >= t.
- Rates are pooled over `splits` random splits, so one threshold covers them all; "identified at FAR f" is
  the identification rate at the lowest threshold that accepts at most a share f of the pooled strangers.

Calibration picks the threshold from the same pooled stranger scores: the lowest threshold whose
strangers-accepted rate is at most the target (so as many enrolled people as possible are named).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import UserError
from app.gallery.base import person_similarity
from app.inference.spec import pairwise_similarity
from app.recognition.analyzer import FaceAnalyzer
from app.recognition.enrollment import IMAGE_SUFFIXES
from app.vision.image_io import read_image

FAR_TARGETS = (1e-2, 1e-3)


@dataclass
class LabelledFaces:
    """Embeddings of the largest face of each photo, with who it is."""

    vectors: np.ndarray  # (N, dim) float32
    people: list[str]  # person of each row ("<set>/<folder>")
    sources: list[Path]  # image of each row
    no_face: list[Path] = field(default_factory=list)  # images where no face was found

    def subset(self, rows: np.ndarray) -> LabelledFaces:
        return LabelledFaces(
            self.vectors[rows], [self.people[i] for i in rows], [self.sources[i] for i in rows], []
        )

    def sets(self) -> list[str]:
        return sorted({p.rsplit("/", 1)[0] for p in self.people})

    def of_set(self, name: str) -> LabelledFaces:
        rows = np.array([i for i, p in enumerate(self.people) if p.rsplit("/", 1)[0] == name], dtype=int)
        return self.subset(rows)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def person_folders(root: Path) -> list[tuple[str, Path]]:
    """(person, folder) pairs under `root`: a folder of people, or a folder of such sets.

    A sub-folder holding images is a person of the set `root.name`; one holding folders is a set.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"photo folder {root} does not exist; pass --images DIR (one sub-folder per person)")
    found: list[tuple[str, Path]] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if _images_in(child):
            found.append((f"{root.name}/{child.name}", child))
        else:
            found.extend(
                (f"{child.name}/{person.name}", person)
                for person in sorted(p for p in child.iterdir() if p.is_dir())
                if _images_in(person)
            )
    if not found:
        raise UserError(
            f"{root} holds no person folders with images; lay it out as DIR/<person>/*.jpg "
            "or DIR/<set>/<person>/*.jpg"
        )
    return found


def largest_face_embedder(analyzer: FaceAnalyzer, flip: bool = False) -> Callable[[Path], np.ndarray | None]:
    """A function embedding the largest face of an image file (None without a face).

    With `flip` the mirrored chip is embedded too and the two vectors averaged (test-time flip).
    """

    def embed_largest(path: Path) -> np.ndarray | None:
        image = read_image(path)
        detections = analyzer.detect_photo(image)
        index = detections.largest()
        if index is None:
            return None
        chips = analyzer.photo_chips(image, detections.landmarks[index : index + 1])
        if flip:
            chips = np.ascontiguousarray(np.concatenate([chips, chips[:, :, ::-1]]))
        return analyzer.embed_chips(chips).mean(axis=0)

    return embed_largest


def embed_folders(
    roots: Sequence[Path], embed_largest: Callable[[Path], np.ndarray | None], dim: int
) -> LabelledFaces:
    """Embed the largest face of every photo under `roots` with `embed_largest` (None = no face)."""
    vectors: list[np.ndarray] = []
    people: list[str] = []
    sources: list[Path] = []
    no_face: list[Path] = []
    seen: set[str] = set()
    for root in roots:
        for person, folder in person_folders(root):
            if person in seen:
                raise UserError(f"person {person} appears twice; pass each photo folder once")
            seen.add(person)
            for image in _images_in(folder):
                vector = embed_largest(image)
                if vector is None:
                    no_face.append(image)
                    continue
                vectors.append(np.asarray(vector, np.float32).ravel())
                people.append(person)
                sources.append(image)
    array = np.asarray(vectors, np.float32).reshape(len(vectors), dim)
    return LabelledFaces(array, people, sources, no_face)


@dataclass
class SplitScores:
    """Pooled probe scores of all splits."""

    genuine_best: np.ndarray  # best score over all enrolled people, per genuine probe
    genuine_right: np.ndarray  # bool: that best person is the probe's own
    stranger_best: np.ndarray  # best score over all enrolled people, per stranger probe
    genuine_own: np.ndarray  # score against the probe's own person (for the verification view)
    enrolled_people: int  # per split
    stranger_people: int  # per split
    splits: int


def split_scores(
    faces: LabelledFaces,
    k: int,
    splits: int,
    seed: int,
    metric: str,
    enroll_share: float = 0.5,
    probes: np.ndarray | None = None,
) -> SplitScores:
    """Score every probe of `splits` random enrol/stranger splits (see the module docstring).

    `probes` (rows as `faces.vectors`, NaN rows = no face found) replaces the vectors the probes are scored
    with, the gallery keeping `faces.vectors`: the same photos drawn otherwise (e.g. small, in a frame),
    against their full-size enrolment. Probes without a face are left out of the rates.
    """
    if k < 1:
        raise UserError(f"--enroll must be >= 1, got {k}")
    if splits < 1:
        raise UserError(f"--splits must be >= 1, got {splits}")
    names = sorted(set(faces.people))
    rows_of = {name: np.array([i for i, p in enumerate(faces.people) if p == name]) for name in names}
    eligible = [n for n in names if len(rows_of[n]) > k]
    n_enrolled = min(len(eligible), max(1, round(enroll_share * len(names))))
    if len(eligible) < 2 or len(names) - n_enrolled < 1:
        raise UserError(
            f"need at least 2 people with more than {k} photos and 1 stranger, found {len(eligible)} "
            f"of {len(names)} people; add photos or lower --enroll"
        )
    probe_vectors = faces.vectors if probes is None else np.asarray(probes, np.float32)
    if probe_vectors.shape != faces.vectors.shape:
        raise ValueError(f"probes {probe_vectors.shape} do not match the faces {faces.vectors.shape}")
    found = ~np.isnan(probe_vectors).any(axis=1)
    similarity = pairwise_similarity(np.nan_to_num(probe_vectors), faces.vectors, metric)
    rng = np.random.default_rng(seed)
    g_best, g_right, g_own, s_best = [], [], [], []
    for _ in range(splits):
        chosen = rng.permutation(len(eligible))[:n_enrolled]
        enrolled = [eligible[i] for i in chosen]
        enrolled_set = set(enrolled)
        gallery_rows, probe_own = [], {}
        for name in enrolled:
            rows = rng.permutation(rows_of[name])
            gallery_rows.append(rows[:k])
            rest = rows[k:]
            probe_own[name] = rest[found[rest]]
        # (probes, people) best score against each enrolled person
        per_person = np.stack([person_similarity(similarity[:, rows]) for rows in gallery_rows], axis=1)
        for column, name in enumerate(enrolled):
            probes = probe_own[name]
            scores = per_person[probes]
            g_best.append(scores.max(axis=1))
            g_right.append(scores.argmax(axis=1) == column)
            g_own.append(scores[:, column])
        strangers = np.array(
            [i for i, p in enumerate(faces.people) if p not in enrolled_set and found[i]], dtype=int
        )
        s_best.append(per_person[strangers].max(axis=1))
    return SplitScores(
        genuine_best=np.concatenate(g_best),
        genuine_right=np.concatenate(g_right),
        stranger_best=np.concatenate(s_best),
        genuine_own=np.concatenate(g_own),
        enrolled_people=n_enrolled,
        stranger_people=len(names) - n_enrolled,
        splits=splits,
    )


def threshold_at_far(stranger_best: np.ndarray, far: float) -> float:
    """Lowest threshold accepting at most a share `far` of the strangers (just above the cut-off score)."""
    scores = np.sort(np.asarray(stranger_best, np.float64))[::-1]
    allowed = int(np.floor(far * scores.size))
    if allowed >= scores.size:
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))


def identified_at(scores: SplitScores, threshold: float) -> float:
    return float(np.mean(scores.genuine_right & (scores.genuine_best >= threshold)))


def strangers_accepted_at(scores: SplitScores, threshold: float) -> float:
    return float(np.mean(scores.stranger_best >= threshold))


@dataclass(frozen=True)
class TradeOff:
    threshold: float
    identified: float
    strangers_accepted: float
    wrong_person: float  # genuine probes whose best match is someone else AND above threshold


def trade_off(scores: SplitScores, thresholds: Sequence[float]) -> list[TradeOff]:
    rows = []
    for t in thresholds:
        wrong = float(np.mean(~scores.genuine_right & (scores.genuine_best >= t)))
        rows.append(TradeOff(float(t), identified_at(scores, t), strangers_accepted_at(scores, t), wrong))
    return rows


@dataclass
class IdentificationReport:
    threshold: float
    identified: float
    strangers_accepted: float
    rank1: float
    at_far: dict[float, tuple[float, float]]  # far -> (threshold, identified)
    enroll: int
    people: int
    probes: int
    genuine_probes: int
    stranger_probes: int
    splits: int

    def as_json(self) -> dict[str, float | int]:
        line: dict[str, float | int] = {
            "identified": round(self.identified, 4),
            "strangers_accepted": round(self.strangers_accepted, 4),
            "threshold": round(self.threshold, 4),
        }
        for far, (threshold, identified) in self.at_far.items():
            line[f"identified_at_far_{far:.0e}".replace("e-0", "e-")] = round(identified, 4)
            line[f"threshold_at_far_{far:.0e}".replace("e-0", "e-")] = round(threshold, 4)
        line.update(
            rank1=round(self.rank1, 4),
            enroll=self.enroll,
            people=self.people,
            probes=self.probes,
            genuine_probes=self.genuine_probes,
            stranger_probes=self.stranger_probes,
            splits=self.splits,
        )
        return line


def identification_report(scores: SplitScores, threshold: float, k: int) -> IdentificationReport:
    at_far = {}
    for far in FAR_TARGETS:
        t = threshold_at_far(scores.stranger_best, far)
        at_far[far] = (t, identified_at(scores, t))
    genuine, strangers = scores.genuine_best.size, scores.stranger_best.size
    return IdentificationReport(
        threshold=float(threshold),
        identified=identified_at(scores, threshold),
        strangers_accepted=strangers_accepted_at(scores, threshold),
        rank1=float(np.mean(scores.genuine_right)),
        at_far=at_far,
        enroll=k,
        people=scores.enrolled_people + scores.stranger_people,
        probes=(genuine + strangers) // scores.splits,
        genuine_probes=genuine // scores.splits,
        stranger_probes=strangers // scores.splits,
        splits=scores.splits,
    )
