"""Enrolment and one-off identification of still images against the gallery (the logic behind `app.enroll`).

Enrolment computes every embedding before it writes anything, so a bad image, a bad model or a gallery of
another embedder leaves the gallery as it was. An image used for enrolment must hold exactly one face:
with none or several we cannot tell which face is the person, so it is reported and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from app.errors import UserError
from app.gallery.base import Gallery
from app.recognition.analyzer import FaceAnalyzer
from app.vision.image_io import read_image

log = logging.getLogger(__name__)

# What a folder is searched for; a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"}
)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class SkippedImage:
    path: Path
    faces: int  # 0 or >= 2

    @property
    def reason(self) -> str:
        found = "no face" if self.faces == 0 else f"{self.faces} faces"
        return f"{found} found, need exactly one"


@dataclass
class EnrollmentBatch:
    """Embeddings computed for one person, not yet written."""

    name: str
    vectors: np.ndarray  # (N, dim) float32
    sources: list[Path]  # image of each row
    skipped: list[SkippedImage] = field(default_factory=list)


@dataclass
class EnrollmentResult:
    name: str
    added: int
    sources: list[Path]
    skipped: list[SkippedImage]


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


def embed_single_faces(analyzer: FaceAnalyzer, name: str, images: Sequence[Path]) -> EnrollmentBatch:
    """Embed the one face of each image; images with none or several are skipped, unreadable ones raise."""
    vectors: list[np.ndarray] = []
    sources: list[Path] = []
    skipped: list[SkippedImage] = []
    for path in images:
        image = read_image(path)
        detections = analyzer.detect(image)
        if len(detections.scores) != 1:
            skipped.append(SkippedImage(path, len(detections.scores)))
            continue
        vectors.append(analyzer.embed(image, detections.landmarks)[0])
        sources.append(path)
    array = np.asarray(vectors, np.float32).reshape(len(vectors), analyzer.spec.dim)
    return EnrollmentBatch(name, array, sources, skipped)


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
    if len(batch.vectors) == 0:
        found = ", ".join(f"{s.path.name}: {s.faces}" for s in batch.skipped[:3])
        more = ", ..." if len(batch.skipped) > 3 else ""
        raise UserError(
            f"none of the {len(batch.skipped)} image(s) for {name} holds exactly one face ({found}{more} "
            "faces); nothing enrolled: use photos showing only that person"
        )
    meta = [{"source": str(path.resolve())} for path in batch.sources]
    added = gallery.add(name, batch.vectors, meta=meta)
    log.info("enrolled %s: %d embeddings, %d images skipped", name, added, len(batch.skipped))
    return EnrollmentResult(name, added, batch.sources, batch.skipped)


def identify_image(
    analyzer: FaceAnalyzer, gallery: Gallery, image_bgr: np.ndarray, threshold: float
) -> list[IdentifiedFace]:
    """Every face in the image with its gallery name, or "unknown" below `threshold` (never the nearest)."""
    detections = analyzer.detect(image_bgr)
    if len(detections.scores) == 0:
        return []
    embeddings = analyzer.embed(image_bgr, detections.landmarks)
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
