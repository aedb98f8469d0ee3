"""Unknown faces store: the best faces of tracks nobody could name, kept for review beside the gallery.

A second Qdrant collection in the gallery's engine, `<QDRANT_COLLECTION>_unknowns` (embedded: the folder
`<QDRANT_PATH>/<collection>_unknowns/`; a server: a collection of that name), one point per kept face. The
point's `name` is its sighting id (one track of one camera: a "visit"), so a sighting is written, counted
and deleted as one unit with the gallery's own operations; the payload holds camera, track, time seen
(Unix seconds), face quality, detector score and the crop's file name. Crops (aligned face chips, JPEG) lie
in `<QDRANT_PATH>/<collection>_unknowns/crops/` whatever the engine, and `clusters.json` there keeps the
cluster id of every sighting, so ids stay the same from one `unknowns list` to the next.

The store checks the embedder like the gallery does: faces kept with another model are refused with a
one-line error (their embeddings cannot be compared with this model's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.config import Settings
from app.errors import UserError
from app.gallery.base import EmbedderIdentity, GalleryRecord
from app.gallery.factory import gallery_location, open_gallery
from app.gallery.storage_files import write_json_atomically

log = logging.getLogger(__name__)

UNKNOWNS_SUFFIX = "_unknowns"
CROPS_DIR = "crops"
CLUSTERS_FILE = "clusters.json"
JPEG_QUALITY = 90
DAY_S = 86400.0


@dataclass
class KeptFace:
    """One face of a sighting, ready to store: its embedding and aligned crop (BGR)."""

    vector: np.ndarray
    crop_bgr: np.ndarray
    quality: float
    det_score: float
    seen: float  # Unix seconds
    frame: int = -1  # the source's frame index
    box: tuple[float, float, float, float] | None = None  # face box on that frame, source pixels


@dataclass
class Sighting:
    """The faces kept of one unknown track (best first)."""

    camera: str
    track: int
    faces: list[KeptFace]
    id: str = field(default_factory=lambda: new_sighting_id())


@dataclass(frozen=True)
class UnknownFace:
    """A stored face as read back (vector None unless asked for)."""

    sighting: str
    camera: str
    track: int
    seen: float
    quality: float
    det_score: float
    crop: str
    vector: np.ndarray | None = None
    frame: int = -1
    box: tuple[float, ...] | None = None


def new_sighting_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"s{stamp}-{uuid.uuid4().hex[:8]}"


def unknowns_settings(settings: Settings) -> Settings:
    """The settings of the unknowns collection: the gallery's engine, `<collection>_unknowns`."""
    return settings.replace(qdrant_collection=settings.qdrant_collection + UNKNOWNS_SUFFIX)


def unknowns_folder(settings: Settings) -> Path:
    """Local folder of the crops and cluster ids (and, embedded, of the Qdrant shard too)."""
    return settings.qdrant_path / (settings.qdrant_collection + UNKNOWNS_SUFFIX)


class UnknownStore:
    """Kept unknown faces; see the module docstring. Use `open_unknowns` to make one."""

    def __init__(self, gallery: Any, folder: Path, where: str) -> None:
        self.gallery = gallery
        self.folder = Path(folder)
        self.crops = self.folder / CROPS_DIR
        self.where = where
        # sighting -> [first seen, last seen, faces]; built on first use, kept up to date by add/forget
        self._index: dict[str, list[float]] | None = None

    @property
    def record(self) -> GalleryRecord | None:
        record: GalleryRecord | None = self.gallery.record
        return record

    # -- writing -------------------------------------------------------------------------------------------

    def add(self, sighting: Sighting) -> int:
        """Write a sighting's crops, then its points in one write; on failure nothing of it remains."""
        if not sighting.faces:
            return 0
        self.crops.mkdir(parents=True, exist_ok=True)
        names = [f"{sighting.id}-{i}.jpg" for i in range(len(sighting.faces))]
        written: list[Path] = []
        try:
            for name, face in zip(names, sighting.faces, strict=True):
                ok, data = cv2.imencode(".jpg", face.crop_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise UserError(f"cannot encode a face crop of sighting {sighting.id}")
                path = self.crops / name
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data.tobytes())
                os.replace(tmp, path)
                written.append(path)
            meta = [
                {
                    "camera": sighting.camera,
                    "track": int(sighting.track),
                    "seen": float(face.seen),
                    "quality": round(float(face.quality), 4),
                    "det_score": round(float(face.det_score), 4),
                    "crop": name,
                    "frame": int(face.frame),
                    "box": None if face.box is None else [round(float(v), 1) for v in face.box],
                }
                for name, face in zip(names, sighting.faces, strict=True)
            ]
            vectors = np.stack([np.asarray(f.vector, np.float32).ravel() for f in sighting.faces])
            added: int = self.gallery.add(sighting.id, vectors, meta)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        if self._index is not None:
            seen = [f.seen for f in sighting.faces]
            self._index[sighting.id] = [min(seen), max(seen), float(added)]
        return added

    def forget(self, sightings: Iterable[str]) -> int:
        """Delete these sightings' points, then their crops; returns the faces removed."""
        removed = 0
        crops: dict[str, list[str]] = {}
        wanted = set(sightings)
        if not wanted:
            return 0
        for face in self.faces():
            if face.sighting in wanted:
                crops.setdefault(face.sighting, []).append(face.crop)
        for sighting in sorted(wanted):
            removed += self.gallery.remove(sighting)
            for name in crops.get(sighting, ()):
                (self.crops / name).unlink(missing_ok=True)
            if self._index is not None:
                self._index.pop(sighting, None)
        return removed

    def prune(self, retain_days: float, max_faces: int, now: float | None = None) -> int:
        """Drop sightings last seen more than `retain_days` ago, then the oldest until at most `max_faces`."""
        now = time.time() if now is None else now
        index = self._sightings_index()
        cutoff = now - retain_days * DAY_S
        drop = {sid for sid, (_first, last, _n) in index.items() if last < cutoff}
        total = sum(n for sid, (_f, _l, n) in index.items() if sid not in drop)
        for sid, (_first, _last, n) in sorted(index.items(), key=lambda item: item[1][1]):
            if total <= max_faces:
                break
            if sid not in drop:
                drop.add(sid)
                total -= n
        return self.forget(drop) if drop else 0

    # -- reading -------------------------------------------------------------------------------------------

    def faces(self, with_vectors: bool = False) -> list[UnknownFace]:
        """Every kept face, oldest first."""
        out = []
        for payload, vector in self.gallery.records(with_vectors=with_vectors):
            out.append(
                UnknownFace(
                    sighting=str(payload["name"]),
                    camera=str(payload.get("camera", "")),
                    track=int(payload.get("track", 0)),
                    seen=float(payload.get("seen", 0.0)),
                    quality=float(payload.get("quality", 0.0)),
                    det_score=float(payload.get("det_score", 0.0)),
                    crop=str(payload.get("crop", "")),
                    vector=None if vector is None else np.asarray(vector, np.float32),
                    frame=int(payload.get("frame", -1)),
                    box=tuple(payload["box"]) if payload.get("box") else None,
                )
            )
        out.sort(key=lambda f: (f.seen, f.sighting, f.crop))
        return out

    def _sightings_index(self) -> dict[str, list[float]]:
        if self._index is None:
            index: dict[str, list[float]] = {}
            for face in self.faces():
                entry = index.setdefault(face.sighting, [face.seen, face.seen, 0.0])
                entry[0], entry[1] = min(entry[0], face.seen), max(entry[1], face.seen)
                entry[2] += 1
            self._index = index
        return self._index

    def crop_path(self, face: UnknownFace) -> Path:
        """The crop file of a face; UserError when it is missing from the folder."""
        path = self.crops / face.crop
        if not face.crop or not path.is_file():
            raise UserError(
                f"crop file {path} of sighting {face.sighting} is missing: restore it, or drop the sighting "
                "with `python -m app.enroll unknowns forget ID`"
            )
        return path

    # -- cluster ids ---------------------------------------------------------------------------------------

    def load_clusters(self) -> tuple[dict[str, int], int]:
        """(sighting -> cluster id, next free id) as saved by the last clustering."""
        path = self.folder / CLUSTERS_FILE
        if not path.is_file():
            return {}, 1
        try:
            data = json.loads(path.read_text())
            clusters = {str(k): int(v) for k, v in data["clusters"].items()}
            return clusters, int(data["next_id"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"cannot read {path}: remove it (cluster ids will be given anew)") from None

    def save_clusters(self, clusters: dict[str, int], next_id: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.record.model_id if self.record else None
        data = {"model_id": record, "next_id": int(next_id), "clusters": dict(sorted(clusters.items()))}
        write_json_atomically(self.folder / CLUSTERS_FILE, data)

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> UnknownStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_unknowns(settings: Settings, spec: EmbedderIdentity | None, client: Any = None) -> UnknownStore:
    """The unknowns store of these settings' gallery engine, for `spec`'s embedder (None: whatever kept it);
    `client` is an injected qdrant-client, as for `open_gallery`.

    Raises UserError when the kept faces come from another embedder, or the store is held elsewhere.
    """
    inner = unknowns_settings(settings)
    where = f"unknown faces at {gallery_location(inner)}"
    gallery = open_gallery(inner, None, client=client)
    if hasattr(gallery, "copy_on_write"):  # a sighting is written per stranger seen: no copy per write
        gallery.copy_on_write = False
    try:
        if spec is not None:
            wanted = GalleryRecord.of(spec)
            stored = gallery.record
            if stored is not None and stored != wanted:
                raise UserError(
                    f"{where} were kept with embedder {stored.model_id} (dim {stored.dim}); this run uses "
                    f"{wanted.model_id} (dim {wanted.dim}): clear them with `python -m app.enroll unknowns "
                    "forget --all`, or set FACEPIPE_KEEP_UNKNOWN=false"
                )
            gallery.record = wanted
    except BaseException:
        gallery.close()
        raise
    return UnknownStore(gallery, unknowns_folder(settings), where)


def remove_store(settings: Settings) -> int:
    """Delete the whole store (collection, crops, cluster ids), whoever kept it; returns its faces."""
    with contextlib.closing(open_unknowns(settings, None)) as store:
        removed = len(store.faces())
        client = getattr(store.gallery, "client", None)
        if client is not None:  # a server collection: drop it; the embedded one goes with its folder
            collection = unknowns_settings(settings).qdrant_collection
            if client.collection_exists(collection):
                client.delete_collection(collection)
    shutil.rmtree(store.folder, ignore_errors=True)
    return removed


def summarize(faces: Sequence[UnknownFace]) -> dict[str, dict[str, Any]]:
    """Per sighting: faces, first and last seen, camera."""
    out: dict[str, dict[str, Any]] = {}
    for face in faces:
        first = {"faces": 0, "first_seen": face.seen, "last_seen": face.seen, "camera": face.camera}
        entry = out.setdefault(face.sighting, first)
        entry["faces"] += 1
        entry["first_seen"] = min(entry["first_seen"], face.seen)
        entry["last_seen"] = max(entry["last_seen"], face.seen)
    return out
