"""Enrolment and one-off identification of still images against the gallery (the logic behind `app.enroll`).

Enrolment computes every embedding before it writes anything, so a bad image, a bad model or a gallery of
another embedder leaves the gallery as it was. An image used for enrolment must hold exactly one face:
with none or several we cannot tell which face is the person, so it is reported and skipped. A face unfit
for recognition (too small, too blurred, turned away: `app.recognition.quality.Refusal`) is skipped with
the reason. Each enrolled photo is reported with its quality and its spread: its best similarity to the
person's other photos (this batch and those already enrolled); one far below the match threshold is
flagged, since a photo unlike the person's others is usually someone else or a bad crop. Several photos
per person help: on the identity photo sets, 3 photos identify 0.89 of faces where 1 identifies 0.71 (at 1 %
strangers accepted, `testbench/calibrate.py`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from app.errors import UserError
from app.gallery.base import Gallery
from app.recognition import quality
from app.recognition.analyzer import FaceAnalyzer
from app.vision.image_io import read_image

log = logging.getLogger(__name__)

# What a folder is searched for; a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"}
)
UNKNOWN = "unknown"
# A photo whose closest other photo of the person scores this far below the match threshold looks like a
# different person (hard genuine pairs of the identity sets score down to ~0.4 at threshold 0.47; different
# people mostly below 0.3).
OUTLIER_BELOW = 0.1


@dataclass(frozen=True)
class SkippedImage:
    path: Path
    faces: int  # 0 or >= 2; 1 when the one face is unfit (see problems)
    problems: tuple[str, ...] = ()  # why the one face is unfit for recognition

    @property
    def reason(self) -> str:
        if self.problems:
            return "; ".join(self.problems) + ": use a sharper, larger, frontal photo"
        found = "no face" if self.faces == 0 else f"{self.faces} faces"
        return f"{found} found, need exactly one"


@dataclass(frozen=True)
class PhotoReport:
    """One enrolled photo: its face quality terms (0..1) and how close it is to the person's other photos."""

    path: Path
    face_height: float  # px
    quality: float
    frontal: float
    sharpness: float
    spread: float | None  # best similarity to the person's other photos (None: the only one)
    outlier: bool  # spread far below the match threshold: likely another person or a bad crop


@dataclass
class EnrollmentBatch:
    """Embeddings computed for one person, not yet written."""

    name: str
    vectors: np.ndarray  # (N, dim) float32
    sources: list[Path]  # image of each row
    skipped: list[SkippedImage] = field(default_factory=list)
    photos: list[PhotoReport] = field(default_factory=list)  # one per row


@dataclass
class EnrollmentResult:
    name: str
    added: int
    sources: list[Path]
    skipped: list[SkippedImage]
    photos: list[PhotoReport] = field(default_factory=list)


@dataclass
class IdentifiedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float  # detector confidence
    name: str  # a gallery name, or "unknown" when no one reaches the threshold
    similarity: float | None  # best similarity to anyone in the gallery; None if the gallery is empty

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN


@dataclass
class IdentifiedImage:
    path: Path
    width: int
    height: int
    faces: list[IdentifiedFace]
    output: Path | None = None  # annotated copy, when asked for


def collect_images(paths: Sequence[Path | str]) -> list[Path]:
    """Files as given plus the images inside folders (recursively, sorted); UserError for a missing path."""
    images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(
                    f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); check it"
                )
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise UserError(f"{path} does not exist; check the path")
    if not images:
        raise UserError("no images given")
    return images


def embed_single_faces(
    analyzer: FaceAnalyzer,
    name: str,
    images: Sequence[Path],
    refusal: quality.Refusal | None = None,
) -> EnrollmentBatch:
    """Embed the one face of each image; images with none, several or an unfit face are skipped.

    Unreadable images raise. `refusal` (default `quality.Refusal()`) says which faces are unfit.
    """
    refusal = refusal or quality.Refusal()
    vectors: list[np.ndarray] = []
    sources: list[Path] = []
    skipped: list[SkippedImage] = []
    terms: list[quality.FaceQuality] = []
    heights: list[float] = []
    for path in images:
        image = read_image(path)
        detections = analyzer.detect_photo(image)
        if len(detections.scores) != 1:
            skipped.append(SkippedImage(path, len(detections.scores)))
            continue
        face = quality.face_quality(image, detections.boxes, detections.landmarks, detections.scores)
        problems = refusal.reasons(detections.boxes[0], detections.landmarks[0], float(face.sharpness[0]))
        if problems:
            skipped.append(SkippedImage(path, 1, tuple(problems)))
            continue
        vectors.append(analyzer.embed_photo(image, detections.landmarks)[0])
        sources.append(path)
        terms.append(face)
        heights.append(float(detections.boxes[0, 3] - detections.boxes[0, 1]))
    array = np.asarray(vectors, np.float32).reshape(len(vectors), analyzer.spec.dim)
    photos = [
        PhotoReport(path, h, float(t.quality[0]), float(t.frontal[0]), float(t.sharpness[0]), None, False)
        for path, h, t in zip(sources, heights, terms, strict=True)
    ]
    return EnrollmentBatch(name, array, sources, skipped, photos)


def photo_spread(
    vectors: np.ndarray, enrolled: np.ndarray, metric: str, threshold: float
) -> tuple[list[float | None], list[bool]]:
    """Per new vector: best similarity to the person's other vectors (new and enrolled), and outlier flags."""
    from app.inference.spec import pairwise_similarity

    everyone = np.concatenate([vectors, enrolled.reshape(-1, vectors.shape[1])]) if len(vectors) else vectors
    if len(everyone) < 2:
        return [None] * len(vectors), [False] * len(vectors)
    similarity = pairwise_similarity(vectors, everyone, metric)
    similarity[np.arange(len(vectors)), np.arange(len(vectors))] = -np.inf  # not itself
    best = similarity.max(axis=1)
    return [float(b) for b in best], [bool(b < threshold - OUTLIER_BELOW) for b in best]


def enroll(
    analyzer: FaceAnalyzer, gallery: Gallery, name: str, paths: Sequence[Path | str]
) -> EnrollmentResult:
    """Add `name`'s face from each image (or folder of images) in one gallery write, after all are embedded.

    UserError, with the gallery unchanged, for a missing or unreadable image or when no image holds exactly
    one face.
    """
    if not name or name != name.strip():
        raise UserError(f"name {name!r} must be non-empty without leading or trailing spaces")
    if name == UNKNOWN:
        raise UserError(
            f"{UNKNOWN!r} is what unrecognised faces are called; enroll the person under another name"
        )
    batch = embed_single_faces(analyzer, name, collect_images(paths))
    unfit = [s for s in batch.skipped if s.problems]
    if len(batch.vectors) == 0 and unfit:
        why = "; ".join(f"{s.path.name}: {'; '.join(s.problems)}" for s in unfit[:3])
        raise UserError(
            f"none of the {len(batch.skipped)} image(s) for {name} is fit for recognition ({why}); "
            "nothing enrolled: use sharp, frontal photos with the face at least "
            f"{quality.Refusal().min_face_size:.0f} px high"
        )
    if len(batch.vectors) == 0:
        found = ", ".join(f"{s.path.name}: {s.faces}" for s in batch.skipped[:3])
        more = ", ..." if len(batch.skipped) > 3 else ""
        raise UserError(
            f"none of the {len(batch.skipped)} image(s) for {name} holds exactly one face ({found}{more} "
            "faces); nothing enrolled: use photos showing only that person"
        )
    enrolled = gallery.vectors(name) if name in gallery.list() else np.zeros((0, analyzer.spec.dim))
    spreads, outliers = photo_spread(batch.vectors, enrolled, analyzer.spec.metric, analyzer.spec.threshold)
    photos = [
        dataclasses.replace(photo, spread=spread, outlier=outlier)
        for photo, spread, outlier in zip(batch.photos, spreads, outliers, strict=True)
    ]
    meta = [{"source": str(path.resolve())} for path in batch.sources]
    added = gallery.add(name, batch.vectors, meta=meta)
    log.info("enrolled %s: %d embeddings, %d images skipped", name, added, len(batch.skipped))
    return EnrollmentResult(name, added, batch.sources, batch.skipped, photos)


def identify_image(
    analyzer: FaceAnalyzer, gallery: Gallery, image_bgr: np.ndarray, threshold: float
) -> list[IdentifiedFace]:
    """Every face in the image with its gallery name, or "unknown" below `threshold` (never the nearest)."""
    detections = analyzer.detect_photo(image_bgr)
    if len(detections.scores) == 0:
        return []
    embeddings = analyzer.embed_photo(image_bgr, detections.landmarks)
    matches = gallery.search(embeddings, k=1)
    faces = []
    for box, score, best in zip(detections.boxes, detections.scores, matches, strict=True):
        similarity = best[0].similarity if best else None
        name = best[0].name if best and similarity is not None and similarity >= threshold else UNKNOWN
        x1, y1, x2, y2 = (float(v) for v in box)
        faces.append(IdentifiedFace((x1, y1, x2, y2), float(score), name, similarity))
    return faces


def identify_paths(
    analyzer: FaceAnalyzer,
    gallery: Gallery,
    paths: Sequence[Path | str],
    threshold: float,
    output: Path | None = None,
) -> list[IdentifiedImage]:
    """Identify the faces of each image (folders are expanded); UserError for a missing or unreadable one.

    With `output`, an annotated copy of each image is written (see `annotated_output_paths`).
    """
    images = collect_images(paths)
    if output is not None and not cv2.haveImageWriter(str(output)):
        raise UserError(f"cannot write images named {output.name}: use an output path ending in .jpg or .png")
    outputs = annotated_output_paths(output, images) if output is not None else [None] * len(images)
    results = []
    for path, out in zip(images, outputs, strict=True):
        image = read_image(path)
        faces = identify_image(analyzer, gallery, image, threshold)
        if out is not None:
            write_annotated(image, faces, out)
        results.append(IdentifiedImage(path, image.shape[1], image.shape[0], faces, out))
    return results


def annotated_output_paths(output: Path, images: Sequence[Path]) -> list[Path]:
    """`output` itself for one image; `<stem>-<image stem><suffix>` beside it for several."""
    if len(images) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{image.stem}{output.suffix}") for image in images]


def write_annotated(image_bgr: np.ndarray, faces: Sequence[IdentifiedFace], output: Path) -> None:
    """Save a copy of the image with each face's box, name and similarity drawn on it."""
    canvas = image_bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    scale = max(0.5, max(canvas.shape[:2]) / 1200)
    for face in faces:
        x1, y1, x2, y2 = (round(v) for v in face.box)
        color = (0, 200, 0) if face.known else (0, 0, 230)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        label = face.name if face.similarity is None else f"{face.name} {face.similarity:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y1 - th - base - 4)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 4, top + th + base + 4), color, cv2.FILLED)
        cv2.putText(
            canvas, label, (x1 + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(output), canvas)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"cannot write {output}: use a writable path ending in .jpg or .png")


def enrollment_notes(result: EnrollmentResult) -> list[str]:
    """Lines for the user: each photo's quality and spread, outliers flagged, a hint to add photos."""
    lines = []
    for photo in result.photos:
        spread = "only photo" if photo.spread is None else f"closest other photo {photo.spread:.2f}"
        line = (
            f"  {photo.path.name}: face {photo.face_height:.0f} px, quality {photo.quality:.2f} (frontal "
            f"{photo.frontal:.2f}, sharpness {photo.sharpness:.2f}), {spread}"
        )
        if photo.outlier:
            line += " <- unlike the others: another person or a bad crop? remove it if so"
        lines.append(line)
    if sum(p.spread is None for p in result.photos) and len(result.photos) < 3:
        lines.append(f"  tip: enroll 3 or more photos of {result.name} (different days, light, angles)")
    return lines
