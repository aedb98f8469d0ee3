"""Recognition stage: track faces (ByteTrack), embed the few that need it, ask the gallery, vote per track.

Per frame: `ByteTracker.update` with every decoded face -> confirmed tracks with ids; `TrackIdentities`
picks the tracks worth embedding now (new, still undecided, a clearly better view, back after a gap...);
those faces are aligned from the frame in the ring, embedded in one model call and searched in the gallery;
the identity manager turns the votes into one label per track (pending / known name / unknown). Track ids
are shown from the first confirmed frame, names once the evidence agrees.

Scene cuts (edited video: a hard cut to another camera) break the motion continuity ByteTrack relies on: a
face box after the cut can overlap a different person's box before it and inherit that track and its label.
On a cut the stage starts a new tracker whose ids continue after the old ones; the identity manager keeps
its memory, so a person seen before the cut can still be re-linked by embedding.

A gap in a live source (capture reconnected or was restarted: `meta.segment` changed) resets more: a new
tracker (ids still continue) and a fresh identity manager, since nothing seen before the gap can be assumed
to be where it was. Placeholder frames sent while the source is away (`meta.status`) are not tracked.

A gallery server that stops answering mid-run does not stop recognition: tracking goes on, tracks keep the
names already decided, new faces stay pending, and frames say `gallery_unavailable` (the GUI shows it).
Searches are retried on a capped exponential backoff (`reconnect.GALLERY_BACKOFF`); no embedding is spent
in between. An unreachable server at start-up is still a one-line error (`open_gallery` in setup): a
misconfigured address should fail fast, a server that drops later should degrade.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from app.config import Settings
from app.errors import UserError
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.messages import FaceDetections, TrackedFaces
from app.pipeline.reconnect import GALLERY_BACKOFF, BackoffPolicy, RetrySchedule
from app.tracking.config import IdentityConfig

log = logging.getLogger(__name__)

GALLERY_K = 2  # the runner-up person lets the identity manager abstain on near ties
# Mean absolute difference (0-255) of consecutive 64x36 grey thumbnails at a hard cut. Measured on the
# Hamilton clip: cuts 27.7-30.4, camera moves at most 13.6; synthetic demo videos at most 7.
SCENE_CUT_DIFF = 20.0


class SceneCutDetector:
    """Tells hard cuts from motion by how much a small grey thumbnail changes from one frame to the next."""

    def __init__(self, threshold: float = SCENE_CUT_DIFF) -> None:
        self.threshold = threshold
        self._previous: np.ndarray | None = None

    def is_cut(self, frame_bgr: np.ndarray) -> bool:
        # Subsample to about twice the thumbnail before the area resize: a full 1080p INTER_AREA pass cost
        # 2.9 ms a frame on the H200 host; a stride of 6 rows 0.40 ms here, of 15 rows (this) 0.10 ms. On
        # the Hamilton clip upscaled to 1080p the cut/motion figures move by at most 0.3 (cuts 27.6-30.1,
        # camera moves at most 13.6) against a threshold of 20.
        step = max(1, frame_bgr.shape[0] // 72)
        small = cv2.resize(frame_bgr[::step, ::step], (64, 36), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
        previous, self._previous = self._previous, grey
        return previous is not None and float(np.abs(grey - previous).mean()) >= self.threshold


@dataclass(frozen=True)
class TrackFace:
    """One confirmed track on this frame, with its run-wide id (what the identity manager reads)."""

    track_id: int
    box: np.ndarray  # (4,) the detection box of this frame
    detection_box: np.ndarray
    landmarks: np.ndarray | None
    score: float


class RecognizeStage:
    name = "recognize"

    def __init__(
        self,
        frames: FrameRingHandle,
        settings: Settings,
        threads: int | None = None,
        identity_config: IdentityConfig | None = None,
        gallery_backoff: BackoffPolicy = GALLERY_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.frames = frames
        self.settings = settings
        self.threads = settings.threads if threads is None else threads
        self.identity_config = identity_config  # None = the tracking package's defaults
        self.gallery = None
        self.tracker = None
        self.embedded_faces = 0
        self.scene_cuts = 0
        self._id_offset = 0  # ids of the trackers before the last cut
        self._max_id = 0
        self.gallery_backoff = gallery_backoff
        self.clock = clock  # paces gallery retries; tests pass a frame clock so the pacing is deterministic
        self.gallery_outages = 0
        self._gallery_down: RetrySchedule | None = None  # set while the gallery server is not answering
        self._segment = 0
        self.unknowns = None  # keeps the best faces of unknown tracks (KEEP_UNKNOWN)

    def setup(self) -> dict[str, object]:
        from app.gallery import gallery_location, open_gallery
        from app.inference.backend import load_model
        from app.inference.spec import embedder_spec_for
        from app.tracking import TrackerConfig, TrackIdentities
        from app.vision.alignment import align_faces

        s = self.settings
        self._align = align_faces
        self.embedder = load_model(s.embedder_model, s.backend, self.threads)
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
        identity = self.identity_config or IdentityConfig()
        self.identities = TrackIdentities(identity, threshold=spec.threshold, metric=spec.metric)
        from app.recognition.unknowns import start_recorder
        from app.url_masking import mask_url

        self.unknowns = start_recorder(s, spec, identity, camera=mask_url(s.video_source))
        # Alignment warps are tiny: OpenCV's thread pool only adds contention with the other stages.
        cv2.setNumThreads(1)
        w, h = spec.input_size
        # Warm-up: the first run of a session is slow, and the torch backend captures a CUDA graph per batch
        # bucket on first use, which would stall a frame mid-run.
        warm_batches = (1, 2, 4, 8, 16) if s.backend == "torch" else (1,)
        for batch in warm_batches:
            self._embed(np.zeros((batch, h, w, 3), np.uint8))
        return {
            "embedder": spec.model_id,
            "threshold": spec.threshold,
            "gallery": gallery_location(s),
            "persons": info.persons,
            "person_names": sorted(self.gallery.list()),  # Home Assistant discovery: a sensor per person
            "embeddings": info.count,
        }

    def start(self, source_info: dict[str, object]) -> None:
        from app.tracking import ByteTracker

        self._fps = float(source_info.get("fps") or 30.0)  # type: ignore[arg-type]
        self.tracker = ByteTracker(self.tracker_config, frame_rate=self._fps)
        self._cuts = SceneCutDetector()

    def process(self, msg: FaceDetections) -> list[TrackedFaces]:
        if self.tracker is None:
            self.start({})
        if msg.meta.status:  # a placeholder while the source is away: nothing to track on it
            return [self._faces_of(TrackedFaces.empty(msg.meta))]
        frame = self.frames.ring.frame(msg.meta.slot)
        if msg.meta.segment != self._segment:
            self._new_segment(msg.meta.segment, msg.meta.frame_index)
        if self._cuts.is_cut(frame):  # (never right after a new segment: its detector starts fresh)
            self._restart_tracks(msg.meta.frame_index)
        tracks = [
            TrackFace(t.track_id + self._id_offset, t.detection_box, t.detection_box, t.landmarks, t.score)
            for t in self.tracker.update(msg.boxes, msg.scores, msg.landmarks)
        ]
        if tracks:
            self._max_id = max(self._max_id, max(t.track_id for t in tracks))
        need = self.identities.select_for_embedding(tracks, frame)
        if need and self._gallery_down is not None and not self._gallery_down.due():
            need = []  # the gallery is away: no embedding until the next retry (the tracks ask again)
        embeddings: dict[int, np.ndarray] = {}
        matches: dict[int, list] = {}
        kept: tuple = ((), None, None)
        if need:
            by_id = {t.track_id: t for t in tracks}
            landmarks = np.stack([by_id[i].landmarks for i in need]).astype(np.float32)
            chips = self._align(frame, landmarks, self.spec)
            vectors = self._embed(chips)
            found = self._search(self.identities.query_vectors(need, vectors))  # track templates
            if found is not None:
                kept = (need, chips, vectors)
                embeddings = dict(zip(need, vectors, strict=True))
                matches = dict(zip(need, found, strict=True))
                self.embedded_faces += len(need)
        labels = self.identities.update(tracks, embeddings, matches)
        if self.unknowns is not None:
            self.unknowns.observe(frame, msg.meta.frame_index, tracks, *kept, labels)
        if not tracks:
            return [self._faces_of(TrackedFaces.empty(msg.meta))]
        names, statuses, similarities, shown_ids = [], [], [], []
        for track in tracks:
            label = labels.get(track.track_id)
            # A track re-linked by face to one that vanished keeps showing the earlier id.
            shown_ids.append(label.linked_id if label is not None and label.linked_id else track.track_id)
            names.append(label.name if label is not None else None)
            statuses.append(label.status if label is not None else "pending")
            similarity = label.similarity if label is not None else None
            similarities.append(math.nan if similarity is None else float(similarity))
        return [
            TrackedFaces(
                meta=msg.meta,
                track_ids=np.array(shown_ids, np.int64),
                # The face as detected on this frame (the Kalman box lags a moving face by a little).
                boxes=np.stack([t.box for t in tracks]).astype(np.float32),
                scores=np.array([t.score for t in tracks], np.float32),
                names=names,
                statuses=statuses,
                similarities=np.array(similarities, np.float32),
                gallery_unavailable=self._gallery_down is not None,
            )
        ]

    def _faces_of(self, faces: TrackedFaces) -> TrackedFaces:
        faces.gallery_unavailable = self._gallery_down is not None
        return faces

    def _search(self, vectors: np.ndarray) -> list | None:
        """Gallery matches per vector; None while the gallery server is not answering (retried later)."""
        try:
            found = self.gallery.search(vectors, k=GALLERY_K)
        except UserError as exc:  # mid-run every gallery error degrades: the server may come back
            down = self._gallery_down
            if down is None:
                down = self._gallery_down = RetrySchedule(self.gallery_backoff, self.clock)
                self.gallery_outages += 1
                log.warning("gallery unavailable (%s); tracking goes on without new names, retrying", exc)
            delay = down.failed()
            log.debug("gallery search failed %d times; next try in %.2f s", down.failures, delay)
            return None
        if self._gallery_down is not None:
            log.warning("gallery available again after %.1f s", self._gallery_down.elapsed_s())
            self._gallery_down = None
        return found

    def _new_segment(self, segment: int, frame_index: int) -> None:
        """The source had a gap: no track and no identity vote carries over; ids continue."""
        from app.tracking import ByteTracker

        self._segment = segment
        self._id_offset = self._max_id
        self.tracker = ByteTracker(self.tracker_config, frame_rate=self._fps)
        before = self.identities.counters
        self.identities.reset()
        self.identities.counters = before  # run totals for the closing log line
        if self.unknowns is not None:
            self.unknowns.reset()
        self._cuts = SceneCutDetector()
        log.info("source gap before frame %d: tracks and identities reset, ids go on after %d",
                 frame_index, self._id_offset)  # fmt: skip

    def _restart_tracks(self, frame_index: int) -> None:
        """A hard cut: no track continues across it; new ids follow the highest one given so far."""
        from app.tracking import ByteTracker

        self.scene_cuts += 1
        self._id_offset = self._max_id
        self.tracker = ByteTracker(self.tracker_config, frame_rate=self._fps)
        log.debug("scene cut at frame %d: tracks restart after id %d", frame_index, self._id_offset)

    def _embed(self, chips: np.ndarray) -> np.ndarray:
        """(N,h,w,3) chips in the spec's channel order -> (N,dim) embeddings, batched when the model can."""
        if self._fixed_batch is None or self._fixed_batch == len(chips):
            return self.spec.postprocess(self.embedder.run(self.spec.preprocess(chips))[0])
        return np.concatenate([self._embed(chips[i : i + 1]) for i in range(len(chips))]) if len(chips) else (
            np.zeros((0, self.spec.dim), np.float32)
        )  # fmt: skip

    def close(self) -> None:
        if self.unknowns is not None:
            self.unknowns.close()
            self.unknowns = None
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None
        if hasattr(self, "identities"):
            c = self.identities.counters
            log.info("recognition: %d tracks, %d faces embedded, %d named, %d re-linked, %d scene cuts",
                     c.tracks, c.embeddings, c.named, c.relinks, self.scene_cuts)  # fmt: skip
        self.frames.close()
