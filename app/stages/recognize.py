"""Recognition stage: track faces (ByteTrack), embed the few that need it, ask the gallery, vote per track.

Per frame: `ByteTracker.update` with every decoded face -> confirmed tracks with ids; `TrackIdentities`
picks the tracks worth embedding now (new, still undecided, a clearly better view, back after a gap...);
those faces are aligned from the frame in the ring, embedded in one model call and searched in the gallery;
the identity manager turns the votes into one label per track (pending / known name / unknown). Track ids
are shown from the first confirmed frame, names once the evidence agrees.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from app.config import Settings
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.messages import FaceDetections, TrackedFaces

log = logging.getLogger(__name__)

GALLERY_K = 2  # the runner-up person lets the identity manager abstain on near ties


class RecognizeStage:
    name = "recognize"

    def __init__(self, frames: FrameRingHandle, settings: Settings) -> None:
        self.frames = frames
        self.settings = settings
        self.gallery = None
        self.tracker = None
        self.embedded_faces = 0

    def setup(self) -> dict[str, object]:
        from app.gallery import gallery_location, open_gallery
        from app.inference.backend import load_model
        from app.inference.spec import embedder_spec_for
        from app.tracking import IdentityConfig, TrackerConfig, TrackIdentities
        from app.vision.alignment import align_faces

        s = self.settings
        self._align = align_faces
        self.embedder = load_model(s.embedder_model, s.backend, s.threads)
        spec = embedder_spec_for(s.embedder_model, s.embedder, self.embedder)
        if s.match_threshold is not None:
            spec = dataclasses.replace(spec, threshold=float(s.match_threshold))
        self.spec = spec
        fixed = self.embedder.inputs[0].fixed_batch
        self._fixed_batch = fixed
        self.gallery = open_gallery(s, spec)
        info = self.gallery.info()
        if info.persons == 0:
            log.warning("the gallery at %s is empty: every face will be unknown", gallery_location(s))
        self.tracker_config = TrackerConfig.from_settings(s)
        self.identities = TrackIdentities(IdentityConfig(), threshold=spec.threshold, metric=spec.metric)
        w, h = spec.input_size
        self._embed(np.zeros((1, h, w, 3), np.uint8))  # warm-up: the first run of a session is slow
        return {
            "embedder": spec.model_id,
            "threshold": spec.threshold,
            "gallery": gallery_location(s),
            "persons": info.persons,
        }

    def start(self, source_info: dict[str, object]) -> None:
        from app.tracking import ByteTracker

        fps = float(source_info.get("fps") or 30.0)  # type: ignore[arg-type]
        self.tracker = ByteTracker(self.tracker_config, frame_rate=fps)

    def process(self, msg: FaceDetections) -> list[TrackedFaces]:
        if self.tracker is None:
            self.start({})
        frame = self.frames.ring.frame(msg.meta.slot)
        tracks = self.tracker.update(msg.boxes, msg.scores, msg.landmarks)
        need = self.identities.select_for_embedding(tracks, frame)
        embeddings: dict[int, np.ndarray] = {}
        matches: dict[int, list] = {}
        if need:
            by_id = {t.track_id: t for t in tracks}
            landmarks = np.stack([by_id[i].landmarks for i in need]).astype(np.float32)
            vectors = self._embed(self._align(frame, landmarks, self.spec))
            found = self.gallery.search(vectors, k=GALLERY_K)
            embeddings = dict(zip(need, vectors, strict=True))
            matches = dict(zip(need, found, strict=True))
            self.embedded_faces += len(need)
        labels = self.identities.update(tracks, embeddings, matches)
        if not tracks:
            return [TrackedFaces.empty(msg.meta)]
        names, statuses, similarities = [], [], []
        for track in tracks:
            label = labels.get(track.track_id)
            names.append(label.name if label is not None else None)
            statuses.append(label.status if label is not None else "pending")
            similarity = label.similarity if label is not None else None
            similarities.append(math.nan if similarity is None else float(similarity))
        return [
            TrackedFaces(
                meta=msg.meta,
                track_ids=np.array([t.track_id for t in tracks], np.int64),
                # The face as detected on this frame (the Kalman box lags a moving face by a little).
                boxes=np.stack([t.detection_box for t in tracks]).astype(np.float32),
                scores=np.array([t.score for t in tracks], np.float32),
                names=names,
                statuses=statuses,
                similarities=np.array(similarities, np.float32),
            )
        ]

    def _embed(self, chips: np.ndarray) -> np.ndarray:
        """(N,h,w,3) chips in the spec's channel order -> (N,dim) embeddings, batched when the model can."""
        if self._fixed_batch is None or self._fixed_batch == len(chips):
            return self.spec.postprocess(self.embedder.run(self.spec.preprocess(chips))[0])
        return np.concatenate([self._embed(chips[i : i + 1]) for i in range(len(chips))]) if len(chips) else (
            np.zeros((0, self.spec.dim), np.float32)
        )  # fmt: skip

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None
        if hasattr(self, "identities"):
            c = self.identities.counters
            log.info("recognition: %d tracks, %d faces embedded, %d named, %d re-linked",
                     c.tracks, c.embeddings, c.named, c.relinks)  # fmt: skip
        self.frames.close()
