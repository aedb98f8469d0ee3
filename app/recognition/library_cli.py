"""The face library commands of `python -m app.enroll`: review and name unknown faces, manage the gallery.

    unknowns list [--json]                 clusters of kept unknown faces (repeat visitors, then single ones)
    unknowns show ID --output sheet.jpg    a contact sheet of a cluster's crops
    unknowns name ID NAME                  enroll its best faces as NAME, drop them from the unknowns
    unknowns forget ID | --older-than DAYS | --all
    list --details                         per person: each embedding's id, source and time
    show NAME --output sheet.jpg           a contact sheet of a person's enrolment faces
    remove NAME --embedding ID             drop one bad embedding ("not this person")
    rename OLD NEW
    export FILE / import FILE              embeddings + embedder id as JSON; import refuses another embedder
    add NAME --video FILE [--track ID --tracks TRACKS]   enroll the best faces of one track of a clip

Every command takes `--json`. Errors are one line (UserError, exit 2) and leave gallery and unknowns as they
were; an output file that exists is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.config import Settings
from app.errors import UserError, first_line
from app.gallery import gallery_location, open_gallery
from app.gallery.base import GalleryRecord, check_name
from app.gallery.unknowns import UnknownFace, UnknownStore, open_unknowns, remove_store
from app.recognition.clustering import assign_ids, group_sightings

EXPORT_FORMAT = "face-gallery-export"
EXPORT_VERSION = 1
NAME_FACES = 10  # best faces of a cluster enrolled by `unknowns name`
SHEET_FACES = 64  # faces on an `unknowns show` sheet at most (the best of each visit first)
VIDEO_FACES = 5  # best faces of a track enrolled by `add --video`
VIDEO_STRIDE = 2  # every other frame of a clip is looked at by `add --video`
CROPS_SUFFIX = "_crops"  # `<collection>_crops/`: the crops of embeddings enrolled from unknowns or video

Handler = Callable[[argparse.Namespace, Settings], int]


# -- small helpers ---------------------------------------------------------------------------------------


def person_name(name: str) -> str:
    """A gallery name, checked by the one name rule (`app.gallery.base.check_name`)."""
    return check_name(name)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def write_new_file(path: Path, data: bytes) -> None:
    """Write `path` only if it does not exist (also when another process races us); never half a file."""
    path = Path(path)
    if path.exists():
        raise UserError(f"output file {path} already exists: choose another name or remove it first")
    if not path.parent.is_dir():
        raise UserError(f"folder {path.parent} of output file {path} does not exist: create it first")
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if the name appeared meanwhile: nothing is replaced
        except FileExistsError:
            raise UserError(f"output file {path} already exists: choose another name or remove it") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_sheet(path: Path, sheet: np.ndarray) -> None:
    suffix = Path(path).suffix.lower() or ".jpg"
    if suffix not in (".jpg", ".jpeg", ".png"):
        raise UserError(f"output {path} must end in .jpg or .png")
    ok, data = cv2.imencode(suffix, sheet)
    if not ok:
        raise UserError(f"cannot encode the contact sheet as {suffix}")
    write_new_file(path, data.tobytes())


def embedder_spec(settings: Settings) -> Any:
    """The configured embedder's identity (reads the ONNX graph; no session is built)."""
    from app.recognition.embedder import configured_spec

    return configured_spec(settings)


def crops_folder(settings: Settings) -> Path:
    return settings.qdrant_path / (settings.qdrant_collection + CROPS_SUFFIX)


def emit(args: argparse.Namespace, doc: Any, lines: Sequence[str]) -> int:
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2))
    else:
        for line in lines:
            print(line)
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]


# -- clusters --------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    id: int
    sightings: list[str]
    faces: list[UnknownFace]

    @property
    def first_seen(self) -> float:
        return min(f.seen for f in self.faces)

    @property
    def last_seen(self) -> float:
        return max(f.seen for f in self.faces)

    @property
    def cameras(self) -> list[str]:
        return sorted({f.camera for f in self.faces})

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "faces": len(self.faces),
            "visits": len(self.sightings),
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "cameras": self.cameras,
            "repeat_visitor": len(self.sightings) > 1,
        }


def recluster(store: UnknownStore) -> list[Cluster]:
    """Cluster every kept face now, keep the earlier ids, save them; clusters by id."""
    faces = store.faces(with_vectors=True)
    previous, next_id = store.load_clusters()
    if not faces:
        if previous:  # everything was forgotten or expired: drop the stale ids (and write nothing new)
            store.save_clusters({}, next_id)
        return []
    assert store.record is not None
    vectors = np.stack([np.asarray(f.vector) for f in faces])
    groups = group_sightings([f.sighting for f in faces], vectors, store.record.metric)
    ids, next_id = assign_ids(groups, previous, next_id)
    store.save_clusters(ids, next_id)
    return clusters_of(faces, ids)


def clusters_of(faces: Sequence[UnknownFace], ids: dict[str, int]) -> list[Cluster]:
    by_id: dict[int, Cluster] = {}
    for face in faces:
        cid = ids.get(face.sighting)
        if cid is None:
            continue
        cluster = by_id.setdefault(cid, Cluster(cid, [], []))
        if face.sighting not in cluster.sightings:
            cluster.sightings.append(face.sighting)
        cluster.faces.append(face)
    return [by_id[k] for k in sorted(by_id)]


def saved_cluster(store: UnknownStore, cluster_id: int) -> Cluster:
    """The cluster as the last `unknowns list` showed it (clustered now if never listed)."""
    ids, _ = store.load_clusters()
    faces = store.faces(with_vectors=True)
    clusters = recluster(store) if not ids and faces else clusters_of(faces, ids)
    for cluster in clusters:
        if cluster.id == cluster_id:
            return cluster
    known = ", ".join(str(c.id) for c in clusters) or "none"
    raise UserError(
        f"no unknowns cluster {cluster_id} (clusters: {known}): run `python -m app.enroll unknowns list`"
    )


def best_faces(faces: Sequence[UnknownFace], count: int) -> list[UnknownFace]:
    """Up to `count` faces, the best of each sighting first, round by round: views from several visits
    make a better enrolment than the best few of one visit."""
    by_sighting: dict[str, list[UnknownFace]] = {}
    for face in sorted(faces, key=lambda f: -f.quality):
        by_sighting.setdefault(face.sighting, []).append(face)
    queues = sorted(by_sighting.values(), key=lambda q: -q[0].quality)
    out: list[UnknownFace] = []
    depth = 0
    while len(out) < count and any(len(q) > depth for q in queues):
        out.extend(q[depth] for q in queues if len(q) > depth)
        depth += 1
    return out[:count]


def cluster_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a cluster id (a number from `unknowns list`)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"cluster ids start at 1, got {value}")
    return value


# -- unknowns commands -----------------------------------------------------------------------------------


def cmd_unknowns_list(args: argparse.Namespace, settings: Settings) -> int:
    with contextlib.closing(open_unknowns(settings, embedder_spec(settings))) as store:
        clusters = recluster(store)
        where = store.where
    repeat = [c for c in clusters if len(c.sightings) > 1]
    single = [c for c in clusters if len(c.sightings) == 1]
    doc = [c.as_dict() for c in repeat + single]
    if not clusters:
        return emit(args, doc, [f"no {where}"])
    rows = lambda group: [  # noqa: E731
        (c.id, len(c.faces), len(c.sightings), iso(c.first_seen), iso(c.last_seen), ",".join(c.cameras))
        for c in group
    ]
    headers = ("id", "faces", "visits", "first_seen", "last_seen", "cameras")
    lines = [f"{where}: {sum(len(c.faces) for c in clusters)} face(s) in {len(clusters)} cluster(s)"]
    if repeat:
        lines += ["", "repeat visitors:"] + ["  " + line for line in table(headers, rows(repeat))]
    if single:
        lines += ["", "seen once:"] + ["  " + line for line in table(headers, rows(single))]
    return emit(args, doc, lines)


def cmd_unknowns_show(args: argparse.Namespace, settings: Settings) -> int:
    from app.vision.contact_sheet import contact_sheet

    if Path(args.output).exists():
        raise UserError(f"output file {args.output} already exists: choose another name or remove it first")
    with contextlib.closing(open_unknowns(settings, embedder_spec(settings))) as store:
        cluster = saved_cluster(store, args.id)
        shown = best_faces(cluster.faces, SHEET_FACES)
        paths = [store.crop_path(face) for face in shown]  # a missing crop fails before anything is written
    images = [cv2.imread(str(p)) for p in paths]
    captions = [f"{iso(f.seen)[5:16]} q{f.quality:.2f}" for f in shown]
    title = f"unknown {cluster.id}: {len(cluster.faces)} faces, {len(cluster.sightings)} visits"
    write_sheet(args.output, contact_sheet(images, captions, title=title))
    doc = {**cluster.as_dict(), "output": str(args.output)}
    return emit(args, doc, [f"unknown {cluster.id}: {len(cluster.faces)} face(s) -> {args.output}"])


def cmd_unknowns_name(args: argparse.Namespace, settings: Settings) -> int:
    name = person_name(args.name)
    spec = embedder_spec(settings)
    with (
        contextlib.closing(open_unknowns(settings, spec)) as store,
        contextlib.closing(open_gallery(settings, spec)) as gallery,
    ):
        cluster = saved_cluster(store, args.id)
        best = best_faces(cluster.faces, NAME_FACES)
        folder = crops_folder(settings)
        folder.mkdir(parents=True, exist_ok=True)
        copied: list[Path] = []
        meta = []
        try:
            for face in best:
                source = store.crops / face.crop
                target = folder / face.crop
                if source.is_file():
                    shutil.copyfile(source, target)
                    copied.append(target)
                meta.append(
                    {
                        "source": f"unknowns:{face.sighting}",
                        "camera": face.camera,
                        "seen": iso(face.seen),
                        "crop": target.name if source.is_file() else "",
                    }
                )
            added = gallery.add(name, np.stack([np.asarray(f.vector) for f in best]), meta)
        except BaseException:
            for path in copied:
                path.unlink(missing_ok=True)
            raise
        # The gallery has the faces now: drop them from the unknowns (and from the saved cluster ids).
        store.forget(cluster.sightings)
        ids, next_id = store.load_clusters()
        store.save_clusters({s: c for s, c in ids.items() if s not in cluster.sightings}, next_id)
        total = gallery.list().get(name, 0)
    doc = {
        "id": cluster.id,
        "name": name,
        "added": added,
        "embeddings": total,
        "visits": len(cluster.sightings),
    }
    return emit(
        args, doc, [f"named unknown {cluster.id} {name}: {added} embedding(s) added, {name} has {total}"]
    )


def cmd_unknowns_forget(args: argparse.Namespace, settings: Settings) -> int:
    chosen = [args.id is not None, args.older_than is not None, args.all]
    if sum(chosen) != 1:
        raise UserError("unknowns forget needs exactly one of: a cluster ID, --older-than DAYS, --all")
    if args.all:
        removed = remove_store(settings)
        return emit(args, {"removed": removed}, [f"forgot every unknown face: {removed}"])
    with contextlib.closing(open_unknowns(settings, embedder_spec(settings))) as store:
        if args.id is not None:
            cluster = saved_cluster(store, args.id)
            sightings = set(cluster.sightings)
            what = f"unknown {cluster.id}"
        else:
            if args.older_than < 0:
                raise UserError(f"--older-than {args.older_than} must not be negative")
            cutoff = datetime.now(UTC).timestamp() - args.older_than * 86400.0
            last: dict[str, float] = {}
            for face in store.faces():
                last[face.sighting] = max(last.get(face.sighting, 0.0), face.seen)
            sightings = {s for s, seen in last.items() if seen < cutoff}
            what = f"sightings last seen more than {args.older_than:g} day(s) ago"
        removed = store.forget(sightings)
        ids, next_id = store.load_clusters()
        store.save_clusters({s: c for s, c in ids.items() if s not in sightings}, next_id)
    doc = {"removed": removed, "visits": len(sightings)}
    return emit(args, doc, [f"forgot {what}: {removed} face(s) of {len(sightings)} visit(s)"])


# -- gallery commands ------------------------------------------------------------------------------------


def cmd_list_details(args: argparse.Namespace, settings: Settings) -> int:
    with contextlib.closing(open_gallery(settings, None)) as gallery:
        info = gallery.info()
        points = gallery.points()
    persons: dict[str, list[dict[str, Any]]] = {}
    for point_id, payload, _ in points:
        extra = {k: v for k, v in payload.items() if k not in ("name", "added", "source")}
        entry = {"id": point_id, "source": payload.get("source"), "added": payload.get("added"), **extra}
        persons.setdefault(str(payload["name"]), []).append(entry)
    where = gallery_location(settings)
    doc = {"gallery": where, "model_id": info.model_id or None, "count": info.count,
           "persons": dict(sorted(persons.items()))}  # fmt: skip
    if not persons:
        return emit(args, doc, [f"gallery {where} is empty"])
    lines = [f"gallery {where} ({info.model_id}): {len(persons)} person(s), {info.count} embedding(s)"]
    for name, entries in sorted(persons.items()):
        lines.append(f"{name}: {len(entries)} embedding(s)")
        rows = [(e["id"], str(e["added"] or "")[:19], e["source"] or "-") for e in entries]
        lines += ["  " + line for line in table(("embedding", "added", "source"), rows)]
    return emit(args, doc, lines)


def _person_points(gallery: Any, name: str, where: str, with_vectors: bool = False) -> list:
    points = gallery.points(name, with_vectors=with_vectors)
    if not points:
        known = ", ".join(gallery.list()) or "none"
        raise UserError(f"no person named {name!r} in gallery {where} (enrolled: {known})")
    return points


def cmd_remove_embedding(args: argparse.Namespace, settings: Settings) -> int:
    where = gallery_location(settings)
    with contextlib.closing(open_gallery(settings, None)) as gallery:
        points = _person_points(gallery, args.name, where)
        ids = [p[0] for p in points]
        if args.embedding not in ids:
            raise UserError(
                f"{args.name} has no embedding {args.embedding!r} (theirs: {', '.join(ids)}); see "
                "`python -m app.enroll list --details`"
            )
        gallery.remove_points([args.embedding])
        left = gallery.list().get(args.name, 0)
    doc = {"name": args.name, "removed": args.embedding, "embeddings": left}
    return emit(args, doc, [f"removed embedding {args.embedding} of {args.name}: {left} left"])


def cmd_remove_json(args: argparse.Namespace, settings: Settings) -> int:
    where = gallery_location(settings)
    with contextlib.closing(open_gallery(settings, None)) as gallery:
        _person_points(gallery, args.name, where)
        removed = gallery.remove(args.name)
    return emit(
        args, {"name": args.name, "removed": removed}, [f"removed {args.name}: {removed} embedding(s)"]
    )


def _kept_meta(payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    meta = {k: v for k, v in payload.items() if k not in ("name", "added")}
    if "added" in payload:
        meta.setdefault("first_added", payload["added"])
    return {**meta, **extra}


def cmd_rename(args: argparse.Namespace, settings: Settings) -> int:
    new = person_name(args.new)
    where = gallery_location(settings)
    with contextlib.closing(open_gallery(settings, None)) as gallery:
        points = _person_points(gallery, args.old, where, with_vectors=True)
        if new == args.old:
            raise UserError(f"{args.old!r} is already called that")
        if gallery.list().get(new):
            raise UserError(f"{new!r} is already in gallery {where}: remove or rename that person first")
        vectors = np.asarray([p[2] for p in points], np.float32)
        # Add under the new name first, then delete the old: an interruption leaves both, never neither.
        gallery.add(new, vectors, [_kept_meta(p[1], renamed_from=args.old) for p in points])
        gallery.remove(args.old)
    doc = {"old": args.old, "new": new, "embeddings": len(points)}
    return emit(args, doc, [f"renamed {args.old} to {new}: {len(points)} embedding(s)"])


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from app.vision.contact_sheet import contact_sheet

    if Path(args.output).exists():
        raise UserError(f"output file {args.output} already exists: choose another name or remove it first")
    where = gallery_location(settings)
    with contextlib.closing(open_gallery(settings, None)) as gallery:
        points = _person_points(gallery, args.name, where)
    folder = crops_folder(settings)
    images, captions = [], []
    for _point_id, payload, _ in points:
        crop, source = payload.get("crop"), payload.get("source")
        path = folder / str(crop) if crop else Path(str(source)) if source else None
        images.append(cv2.imread(str(path)) if path is not None and path.is_file() else None)
        captions.append(str(payload.get("added", ""))[:10])
    write_sheet(args.output, contact_sheet(images, captions, title=f"{args.name}: {len(points)} embeddings"))
    doc = {"name": args.name, "embeddings": len(points), "missing": sum(i is None for i in images),
           "output": str(args.output)}  # fmt: skip
    return emit(args, doc, [f"{args.name}: {len(points)} embedding(s) -> {args.output}"])


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    if Path(args.file).exists():
        raise UserError(f"output file {args.file} already exists: choose another name or remove it first")
    with contextlib.closing(open_gallery(settings, None)) as gallery:
        record = gallery.record
        points = gallery.points(with_vectors=True)
    if record is None or not points:
        raise UserError(f"gallery {gallery_location(settings)} is empty: nothing to export")
    doc = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        **record.as_dict(),
        "points": [
            {"name": p[1]["name"], "vector": [float(v) for v in p[2]], "meta": _kept_meta(p[1])}
            for p in points
        ],
    }
    write_new_file(Path(args.file), (json.dumps(doc) + "\n").encode())
    persons = len({p[1]["name"] for p in points})
    out = {"file": str(args.file), "model_id": record.model_id, "embeddings": len(points), "persons": persons}
    return emit(args, out, [f"exported {len(points)} embedding(s) of {persons} person(s) to {args.file}"])


def _read_export(path: Path) -> tuple[GalleryRecord, dict[str, list[tuple[list[float], dict[str, Any]]]]]:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"export file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read export file {path}: {first_line(exc)}") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path} is not a gallery export (made by `python -m app.enroll export`)")
    if doc.get("version") != EXPORT_VERSION:
        raise UserError(
            f"{path} is export version {doc.get('version')!r}; this version reads {EXPORT_VERSION}"
        )
    record = GalleryRecord.from_mapping(doc, str(path))
    persons: dict[str, list[tuple[list[float], dict[str, Any]]]] = {}
    for i, point in enumerate(doc.get("points") or []):
        try:
            name, vector, meta = (
                person_name(str(point["name"])),
                point["vector"],
                dict(point.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: point {i} has no name or vector; the file is damaged") from None
        if not isinstance(vector, list) or len(vector) != record.dim:
            raise UserError(f"{path}: point {i} is not a {record.dim}-d vector; the file is damaged")
        persons.setdefault(name, []).append((vector, meta))
    return record, persons


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    record, persons = _read_export(args.file)
    wanted = GalleryRecord.of(embedder_spec(settings))
    if record != wanted:
        raise UserError(
            f"{args.file} holds embeddings of {record.model_id} (dim {record.dim}); this gallery uses "
            f"{wanted.model_id} (dim {wanted.dim}): re-enroll from photos instead, "
            "or set FACEPIPE_EMBEDDER_MODEL"
        )
    with contextlib.closing(open_gallery(settings, wanted)) as gallery:
        existing = gallery.list()
        clash = sorted(set(persons) & set(existing))
        if clash:
            raise UserError(
                f"{', '.join(clash)} already in gallery {gallery_location(settings)}: remove or rename first"
            )
        for name, rows in persons.items():  # every check passed before the first write
            gallery.add(name, np.asarray([r[0] for r in rows], np.float32), [r[1] for r in rows])
    count = sum(len(r) for r in persons.values())
    doc = {"file": str(args.file), "persons": len(persons), "embeddings": count}
    return emit(args, doc, [f"imported {count} embedding(s) of {len(persons)} person(s) from {args.file}"])


# -- enrolling from a video ------------------------------------------------------------------------------


def _track_boxes(path: Path, track: int) -> dict[int, np.ndarray]:
    """frame index (0-based) -> box of `track` from a `--tracks-out` file (.jsonl, or MOTChallenge .csv)."""
    if not Path(path).is_file():
        raise UserError(
            f"tracks file {path} does not exist: write one with `python -m app.main --tracks-out`"
        )
    boxes: dict[int, np.ndarray] = {}
    try:
        with open(path, newline="") as handle:
            if Path(path).suffix.lower() == ".csv":
                for row in csv.reader(handle):
                    if len(row) >= 6 and int(float(row[1])) == track:
                        x, y, w, h = (float(v) for v in row[2:6])
                        boxes[int(float(row[0])) - 1] = np.array([x - 1, y - 1, x - 1 + w, y - 1 + h])
            else:
                for line in handle:
                    if line.strip():
                        row = json.loads(line)
                        if int(row["track"]) == track:
                            boxes[int(row["frame"])] = np.asarray(row["box"], np.float64)
    except (ValueError, KeyError, TypeError, IndexError):
        raise UserError(f"{path} is not a tracks file written by `python -m app.main --tracks-out`") from None
    if not boxes:
        raise UserError(f'track {track} is not in {path}: pick an id from its "track" column')
    return boxes


def cmd_add_video(args: argparse.Namespace, settings: Settings) -> int:
    from app.recognition.analyzer import FaceAnalyzer
    from app.recognition.identity_config import IdentityConfig
    from app.recognition.unknowns import face_quality
    from app.tracking.matching import box_iou

    name = person_name(args.name)
    if args.paths:
        raise UserError("add takes either images or --video, not both")
    if (args.track is None) != (args.tracks is None):
        raise UserError("--track ID needs --tracks FILE (the --tracks-out file the id comes from), and back")
    if not Path(args.video).is_file():
        raise UserError(f"video {args.video} does not exist")
    wanted = _track_boxes(args.tracks, args.track) if args.track is not None else None
    capture = cv2.VideoCapture(str(args.video))
    if not capture.isOpened():
        raise UserError(f"cannot open video {args.video}: is it a video file?")
    analyzer = FaceAnalyzer(settings)
    config = IdentityConfig()
    candidates: list[tuple[float, int, np.ndarray]] = []  # (quality, frame, chip)
    several = 0
    frame_index = -1
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frame_index += 1
            if wanted is not None and frame_index not in wanted:
                continue
            if wanted is None and frame_index % VIDEO_STRIDE:
                continue
            dets = analyzer.detect(frame)
            if not len(dets.scores):
                continue
            if wanted is not None:
                overlap = box_iou(wanted[frame_index][None], dets.boxes.astype(np.float64))[0]
                pick = int(np.argmax(overlap))
                if overlap[pick] < 0.5:
                    continue
            else:
                if len(dets.scores) > 1:
                    several += 1
                    continue
                pick = 0
            quality = face_quality(frame, dets.boxes[pick][None], dets.landmarks[pick][None],
                                   dets.scores[pick : pick + 1], config)[0]  # fmt: skip
            chip = analyzer.frame_chips(frame, dets.landmarks[pick][None], dets.boxes[pick][None])[0]
            candidates.append((float(quality), frame_index, chip))
            candidates = sorted(candidates, key=lambda c: -c[0])[:VIDEO_FACES]
    finally:
        capture.release()
    if several and wanted is None and not candidates:
        raise UserError(
            f"{args.video} shows several faces at once: run `python -m app.main --video-source {args.video} "
            "--tracks-out tracks.jsonl`, then pick one with --track ID --tracks tracks.jsonl"
        )
    if wanted is None and several:
        raise UserError(
            f"{args.video} shows several faces on {several} frame(s): pick the person's track with "
            "--track ID --tracks FILE (from `python -m app.main --tracks-out`)"
        )
    if not candidates:
        raise UserError(f"no face of the chosen track found in {args.video}")
    chips = np.stack([c[2] for c in candidates])
    vectors = analyzer.embed_chips(chips)
    folder = crops_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"video-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    meta, written = [], []
    try:
        for i, (quality, frame_no, chip) in enumerate(candidates):
            crop = folder / f"{stem}-{i}.jpg"
            bgr = chip[..., ::-1] if analyzer.spec.channel_order == "RGB" else chip
            cv2.imwrite(str(crop), np.ascontiguousarray(bgr))
            written.append(crop)
            meta.append(
                {"source": f"{args.video}#frame={frame_no}", "crop": crop.name, "quality": round(quality, 4)}
            )
        with contextlib.closing(open_gallery(settings, analyzer.spec)) as gallery:
            added = gallery.add(name, vectors, meta)
            total = gallery.list().get(name, 0)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    frames = [c[1] for c in candidates]
    doc = {"name": name, "added": added, "embeddings": total, "frames": frames, "video": str(args.video)}
    return emit(
        args,
        doc,
        [f"enrolled {name}: {added} face(s) from {args.video} (frames {frames}); {name} has {total}"],
    )


def cmd_add_json(
    args: argparse.Namespace, settings: Settings, analyzer_factory: Callable[[Settings], Any]
) -> int:
    from app.recognition.enrollment import collect_images, enroll

    name = person_name(args.name)
    collect_images(args.paths)
    analyzer = analyzer_factory(settings)
    with contextlib.closing(open_gallery(settings, analyzer.spec)) as gallery:
        result = enroll(analyzer, gallery, name, args.paths)
        total = gallery.list().get(name, 0)
    doc = {"name": name, "added": result.added, "embeddings": total,
           "skipped": [{"path": str(s.path), "reason": s.reason} for s in result.skipped]}  # fmt: skip
    return emit(args, doc, [])


# -- registration with the enroll CLI --------------------------------------------------------------------


def extend_parsers(
    add: argparse.ArgumentParser, list_: argparse.ArgumentParser, remove: argparse.ArgumentParser
) -> None:
    """Options the library adds to the enroll CLI's own add, list and remove commands."""
    add.add_argument("--video", type=Path, help="enroll the best faces of one person's track in this clip")
    add.add_argument("--track", type=int, metavar="ID", help="the track id (from --tracks FILE) to enroll")
    add.add_argument("--tracks", type=Path, metavar="FILE", help="the --tracks-out file of a run on the clip")
    add.add_argument("--json", action="store_true", help="print one JSON document")
    list_.add_argument("--details", action="store_true", help="each embedding: id, source, time added")
    remove.add_argument("--embedding", metavar="ID", help="remove only this embedding (see list --details)")
    remove.add_argument("--json", action="store_true", help="print one JSON document")


def register(
    commands: Any, add_setting_options: Callable[[argparse.ArgumentParser], None]
) -> dict[str, Handler]:
    """Add the library's own commands to the enroll CLI's sub-parsers; returns command -> handler."""
    unknowns = commands.add_parser("unknowns", help="review, name or forget the unknown faces kept by runs")
    sub = unknowns.add_subparsers(dest="unknowns_command", required=True, metavar="ACTION")
    parsers = []
    p = sub.add_parser("list", help="clusters of unknown faces: id, faces, visits, first/last seen, cameras")
    parsers.append(p)
    p = sub.add_parser("show", help="write a contact sheet of a cluster's faces")
    p.add_argument("id", type=cluster_id)
    p.add_argument("--output", type=Path, required=True, help="the .jpg/.png to write (must not exist)")
    parsers.append(p)
    p = sub.add_parser(
        "name", help="enroll a cluster as a person (new or existing) and drop it from the unknowns"
    )
    p.add_argument("id", type=cluster_id)
    p.add_argument("name")
    parsers.append(p)
    p = sub.add_parser("forget", help="drop a cluster, or the faces older than some days, or all")
    p.add_argument("id", type=cluster_id, nargs="?")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="sightings last seen more than DAYS ago")
    p.add_argument("--all", action="store_true", help="every kept unknown face (also of another embedder)")
    parsers.append(p)

    p = commands.add_parser("show", help="write a contact sheet of a person's enrolment faces")
    p.add_argument("name")
    p.add_argument("--output", type=Path, required=True, help="the .jpg/.png to write (must not exist)")
    parsers.append(p)
    p = commands.add_parser("rename", help="rename a person")
    p.add_argument("old")
    p.add_argument("new")
    parsers.append(p)
    p = commands.add_parser("export", help="write the gallery's embeddings and embedder id to a JSON file")
    p.add_argument("file", type=Path)
    parsers.append(p)
    p = commands.add_parser("import", help="add the persons of an export file (same embedder only)")
    p.add_argument("file", type=Path)
    parsers.append(p)
    for parser in parsers:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        add_setting_options(parser)
    return {
        "unknowns": _unknowns,
        "show": cmd_show,
        "rename": cmd_rename,
        "export": cmd_export,
        "import": cmd_import,
    }


def _unknowns(args: argparse.Namespace, settings: Settings) -> int:
    handlers: dict[str, Handler] = {
        "list": cmd_unknowns_list,
        "show": cmd_unknowns_show,
        "name": cmd_unknowns_name,
        "forget": cmd_unknowns_forget,
    }
    return handlers[args.unknowns_command](args, settings)
