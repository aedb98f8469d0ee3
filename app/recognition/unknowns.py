"""Which faces of an unknown track to keep, and keeping them without holding the pipeline up.

The tracking side already aligned and embedded a few faces of each track; `UnknownKeeper.observe` gets
those (chips, embeddings) and the frame's labels, and keeps per track the `faces_per_track` best ones by
quality: the project's face quality (`app.recognition.quality`: size, frontalness, sharpness, detector
score) times the fraction of the box inside the frame. Faces under `min_quality` are not kept. When a
track has been gone for `end_after` frames (or the run ends), its faces become a `Sighting` if its last
label was "unknown" and it was never named; a track that was named at any point is dropped (the unknowns
must not hold enrolled people), and so is one that never got decided.

`UnknownRecorder` runs the keeper on the caller's thread (bookkeeping only: no model call, no I/O) and hands
finished sightings to a writer thread through a bounded queue (JPEG encoding, the Qdrant write, retention).
When the queue is full the sighting is dropped and counted: the pipeline never waits on the store.

With several tracking processes (a pipeline's lanes) the store is held by one process, the shared embedding
worker: each lane keeps its cameras' `UnknownKeeper`s and sends finished sightings with a `SightingSender`
on one queue, ending with `LaneDone`; the worker's `UnknownRecorder` (no keeper of its own) writes them. So
keeping unknown faces no longer ties every camera to one tracking process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.config import Settings
from app.gallery.unknowns import KeptFace, Sighting, UnknownStore, open_unknowns
from app.recognition import quality
from app.recognition.identity_config import IdentityConfig

log = logging.getLogger(__name__)

QUEUE_SIZE = 64  # sightings waiting for the writer; more are dropped (the store is slow or stuck)
CLOSE_TIMEOUT_S = 30.0  # how long close() lets the writer drain before giving up


@dataclass(frozen=True)
class KeepConfig:
    faces_per_track: int = 5
    min_quality: float = 0.3
    # Frames a track must be gone before its sighting closes: longer than the identity policy's memory
    # of a vanished track would only delay the write; shorter risks two sightings of one short occlusion.
    end_after: int = 60

    @classmethod
    def from_settings(cls, settings: Settings) -> KeepConfig:
        return cls(faces_per_track=settings.unknown_faces_per_track, min_quality=settings.unknown_min_quality)


def face_quality(
    frame_bgr: quality.Frame,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    det_scores: np.ndarray,
    config: IdentityConfig,
) -> np.ndarray:
    """(N,) quality in 0..1: the project's face quality (`app.recognition.quality`, at the identity policy's
    reference size and sharpness) times the fraction of the box inside the frame."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0)
    scale = quality.QualityConfig(
        reference_size=config.reference_face_size, reference_sharpness=config.reference_sharpness
    )
    terms = quality.face_quality(frame_bgr, boxes, landmarks, np.asarray(det_scores, np.float64), scale)
    return terms.quality * quality.inside_fraction(boxes, frame_bgr.shape[:2])


@dataclass
class _Candidate:
    faces: list[KeptFace] = field(default_factory=list)
    status: str = "pending"
    named: bool = False
    last_frame: int = 0


class UnknownKeeper:
    """Per-track best faces; returns a Sighting when an unknown track ends. See the module docstring."""

    def __init__(
        self,
        config: KeepConfig,
        identity_config: IdentityConfig | None = None,
        camera: str = "",
        channel_order: str = "BGR",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.identity_config = identity_config or IdentityConfig()
        self.camera = camera
        self.rgb_chips = channel_order == "RGB"
        self.clock = clock
        self._tracks: dict[int, _Candidate] = {}

    def observe(
        self,
        frame_bgr: quality.Frame,
        frame_index: int,
        tracks: Sequence[object],
        embedded: Sequence[int],
        chips: np.ndarray,
        vectors: np.ndarray,
        labels: Mapping[int, object],
    ) -> list[Sighting]:
        """One frame: `tracks` present (track_id, detection_box, landmarks, score), the ids `embedded` now
        with their aligned `chips` and `vectors` (same order), and the labels (TrackLabel) per track id."""
        by_id = {int(t.track_id): t for t in tracks}  # type: ignore[attr-defined]
        for track_id in by_id:
            candidate = self._tracks.setdefault(track_id, _Candidate())
            candidate.last_frame = frame_index
            label = labels.get(track_id)
            status = getattr(label, "status", "pending")
            candidate.status = status
            if status == "known":
                candidate.named = True
                candidate.faces.clear()  # never kept: an enrolled person's faces are no unknowns
        chosen = [i for i, tid in enumerate(embedded) if tid in by_id and not self._tracks[tid].named]
        if chosen:
            picked = [by_id[int(embedded[i])] for i in chosen]
            quality = face_quality(
                frame_bgr,
                np.stack([np.asarray(t.detection_box, np.float64) for t in picked]),  # type: ignore[attr-defined]
                np.stack([np.asarray(t.landmarks, np.float64) for t in picked]),  # type: ignore[attr-defined]
                np.array([float(t.score) for t in picked]),  # type: ignore[attr-defined]
                self.identity_config,
            )
            now = self.clock()
            for i, track, q in zip(chosen, picked, quality, strict=True):
                if q < self.config.min_quality:
                    continue
                chip = chips[i][..., ::-1] if self.rgb_chips else chips[i]
                x1, y1, x2, y2 = (float(v) for v in track.detection_box)  # type: ignore[attr-defined]
                box = (x1, y1, x2, y2)
                face = KeptFace(np.array(vectors[i], np.float32), np.ascontiguousarray(chip), float(q),
                                float(track.score), now, int(frame_index), box)  # type: ignore[attr-defined]  # fmt: skip
                self._keep(self._tracks[int(track.track_id)], face)  # type: ignore[attr-defined]
        ended = [tid for tid, c in self._tracks.items() if frame_index - c.last_frame > self.config.end_after]
        return [s for s in (self._close(tid) for tid in ended) if s is not None]

    def finish(self) -> list[Sighting]:
        """Close every open track (end of the run)."""
        return [s for s in (self._close(tid) for tid in list(self._tracks)) if s is not None]

    def reset(self) -> list[Sighting]:
        """The source had a gap: the tracks before it are over."""
        return self.finish()

    def _keep(self, candidate: _Candidate, face: KeptFace) -> None:
        faces = candidate.faces
        if len(faces) >= self.config.faces_per_track:
            worst = min(range(len(faces)), key=lambda i: faces[i].quality)
            if faces[worst].quality >= face.quality:
                return
            faces.pop(worst)
        faces.append(face)

    def _close(self, track_id: int) -> Sighting | None:
        candidate = self._tracks.pop(track_id)
        if candidate.named or candidate.status != "unknown" or not candidate.faces:
            return None
        faces = sorted(candidate.faces, key=lambda f: -f.quality)
        return Sighting(camera=self.camera, track=track_id, faces=faces)


@dataclass
class RecorderCounters:
    sightings: int = 0  # written to the store
    faces: int = 0
    dropped: int = 0  # sightings lost because the writer was behind
    sent: int = 0  # sightings queued (for the writer, or for the embedding worker's store)
    failed: int = 0  # sightings the store refused
    pruned: int = 0  # faces dropped by retention or the size bound


@dataclass(frozen=True)
class LaneDone:
    """A tracking process has closed: nothing more comes from it on the sightings queue."""

    lane: int


class _SightingOutlet:
    """A bounded queue finished sightings go on without waiting: a full queue drops and counts them. A stage
    tracking several cameras keeps one UnknownKeeper per camera and hands it in with each `*_for` call."""

    _outlet: Any
    counters: RecorderCounters

    def observe_for(self, keeper: UnknownKeeper, *args: object, **kwargs: object) -> None:
        self.submit(keeper.observe(*args, **kwargs))  # type: ignore[arg-type]

    def reset_for(self, keeper: UnknownKeeper) -> None:
        self.submit(keeper.reset())

    def finish_for(self, keeper: UnknownKeeper) -> None:
        """That camera's open tracks end now (before `close`)."""
        self.submit(keeper.finish())

    def submit(self, sightings: list[Sighting]) -> None:
        for sighting in sightings:
            try:
                self._outlet.put_nowait(sighting)
            except queue.Full:
                self.counters.dropped += 1
            else:
                self.counters.sent += 1


class SightingSender(_SightingOutlet):
    """A tracking process's side of the store the embedding worker holds: each camera's keeper runs here,
    its finished sightings go on the worker's queue (tracking never waits on the store)."""

    def __init__(self, sightings: Any, lane: int) -> None:
        self._outlet = sightings
        self.lane = lane
        self.counters = RecorderCounters()

    def close(self) -> None:
        """Say this lane is done (after `finish_for` of its cameras): the worker stops waiting for it."""
        try:
            self._outlet.put(LaneDone(self.lane), timeout=CLOSE_TIMEOUT_S)
        except queue.Full:
            log.warning("unknowns: the embedding worker is not taking sightings; lane %d ends", self.lane)
        log.info("unknowns: sent %d sighting(s) to the store; %d dropped (the writer was behind)",
                 self.counters.sent, self.counters.dropped)  # fmt: skip


class UnknownRecorder(_SightingOutlet):
    """The keeper on the caller's thread, the store on a writer thread; see the module docstring. Without a
    keeper (the embedding worker's), it writes the sightings handed to `submit` (finished elsewhere)."""

    def __init__(
        self, store: UnknownStore, keeper: UnknownKeeper | None, retain_days: float, max_faces: int
    ) -> None:
        self.store = store
        self.keeper = keeper
        self.retain_days = retain_days
        self.max_faces = max_faces
        self.counters = RecorderCounters()
        self._outlet: queue.Queue[Sighting | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._write_loop, name="unknowns-writer", daemon=True)
        self._closed = False
        self._prune()  # retention also applies to what earlier runs kept
        self._thread.start()

    def observe(self, *args: object, **kwargs: object) -> None:
        """`UnknownKeeper.observe`; finished sightings go to the writer (or are dropped when it is behind)."""
        assert self.keeper is not None
        self.submit(self.keeper.observe(*args, **kwargs))  # type: ignore[arg-type]

    def reset(self) -> None:
        assert self.keeper is not None
        self.submit(self.keeper.reset())

    def _write_loop(self) -> None:
        while True:
            sighting = self._outlet.get()
            if sighting is None:
                return
            try:
                self.counters.faces += self.store.add(sighting)
                self.counters.sightings += 1
                self._prune()
            except Exception as exc:  # a store failure must not end recognition: count it, go on
                self.counters.failed += 1
                log.warning("could not keep unknown sighting %s: %s", sighting.id, exc)

    def _prune(self) -> None:
        try:
            self.counters.pruned += self.store.prune(self.retain_days, self.max_faces)
        except Exception as exc:
            log.warning("could not apply unknown-face retention: %s", exc)

    def close(self) -> None:
        """Close the open tracks, let the writer drain (bounded), close the store."""
        if self._closed:
            return
        self._closed = True
        if self.keeper is not None:
            self.submit(self.keeper.finish())
        try:
            self._outlet.put(None, timeout=CLOSE_TIMEOUT_S)
        except queue.Full:
            log.warning("unknowns writer is stuck; %d sightings not written", self._outlet.qsize())
        self._thread.join(CLOSE_TIMEOUT_S)
        c = self.counters
        log.info("unknowns: kept %d sighting(s), %d face(s); %d dropped, %d failed, %d pruned",
                 c.sightings, c.faces, c.dropped, c.failed, c.pruned)  # fmt: skip
        if not self._thread.is_alive():
            self.store.close()


def start_writer(settings: Settings, spec: object) -> UnknownRecorder | None:
    """The embedding worker's recorder (the store and its writer, no keeper), or None with
    KEEP_UNKNOWN=false. Raises UserError like `open_unknowns`."""
    if not settings.keep_unknown:
        return None
    store = open_unknowns(settings, spec)  # type: ignore[arg-type]
    return UnknownRecorder(store, None, settings.unknown_retain_days, settings.unknown_max_faces)


def start_recorder(
    settings: Settings, spec: object, identity_config: IdentityConfig | None, camera: str
) -> UnknownRecorder | None:
    """The recorder for a run, or None with KEEP_UNKNOWN=false. Raises UserError like `open_unknowns`."""
    if not settings.keep_unknown:
        return None
    store = open_unknowns(settings, spec)  # type: ignore[arg-type]
    try:
        keeper = UnknownKeeper(
            KeepConfig.from_settings(settings),
            identity_config,
            camera=camera,
            channel_order=str(getattr(spec, "channel_order", "BGR")),
        )
        return UnknownRecorder(store, keeper, settings.unknown_retain_days, settings.unknown_max_faces)
    except BaseException:
        store.close()
        raise
