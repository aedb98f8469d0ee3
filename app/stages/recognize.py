"""Recognition stage: track faces (ByteTrack), embed the few that need it, ask the gallery, vote per track.

One stage hosts the trackers of several streams: every piece of per-stream state (tracker, scene-cut
detector, identity memory, segment, track-id offset) lives in a `StreamTracks` keyed by `meta.stream`, so
cameras never share a track, an id or a vote; the embedder and the gallery are shared.

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

Pixels are read through the ring's format-free `FramePixels` (an NVDEC camera's ring may hold NV12): the
scene-cut thumbnail is taken from the planes directly (`every`, the numbers a BGR ring gives), and the
sharpness of a face (choosing what to embed, unknown faces' quality) and the chips aligned for the embedder
convert only their regions, so no tracking frame converts the whole picture (10 chips from a 1080p frame:
3.3-4.0 ms against 3.8-4.5 ms converting the frame first, 2-core box; app/vision/alignment.py).

Embedding and gallery search run in the shared embedding worker (`embed.py`) when the stage is given its
queues (`EmbedChannel`): tracking sends the chips of the tracks to look at and never waits for the answer
on a live source. On a file the answer to a request made on a stream's frame n is applied on its frame
n + `RESULT_LAG_FRAMES` (waiting for it then if it is late), so a file's tracks and names come out the same
on every run and whatever else the worker serves; on a live camera an answer is applied as soon as it is
back. A lane that is behind takes the frames already queued together (`process_batch`, up to `LANE_BATCH`):
while one file stream waits for a due answer, the other streams' frames are tracked, so the wait costs the
lane nothing while it has other cameras' work (what each frame gets is unchanged). Without the queues
(one-process use, tests) the stage embeds in-process, on the frame itself.

A gallery server that stops answering mid-run does not stop recognition: tracking goes on, tracks keep the
names already decided, new faces stay pending, and frames say `gallery_unavailable` (the GUI shows it).
Searches are retried on a capped exponential backoff (`reconnect.GALLERY_BACKOFF`); no embedding is spent
in between. An unreachable server at start-up is still a one-line error (`open_gallery` in setup): a
misconfigured address should fail fast, a server that drops later should degrade.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from app.config import Settings
from app.pipeline.frame_ring import FrameRingHandle, StreamRings
from app.pipeline.messages import (
    EmbedRequest,
    EmbedResult,
    FaceDetections,
    SourceInfo,
    TemplateParts,
    TrackedFaces,
)
from app.pipeline.reconnect import GALLERY_BACKOFF, BackoffPolicy
from app.pipeline.stage_runner import Capabilities
from app.recognition.identity import TrackLabel
from app.recognition.identity_config import IdentityConfig
from app.recognition.lookahead import NameLookahead
from app.recognition.refind import refind_missed
from app.recognition.refind import score_cap as refind_score_cap
from app.stages.embed import FaceEmbedder
from app.tracking.config import TrackerConfig
from app.url_masking import mask_url
from app.vision.pixel_format import FramePixels

log = logging.getLogger(__name__)

# Frames of a file stream between an embed request and the frame its answer is applied on: the worker's
# round trip overlaps the next frame's detection, and the tracker waits only when it takes longer than that.
# The RESULT_LAG setting picks another k (any fixed k is as reproducible; names come up to k frames later).
# Measured on the Hamilton clip (Lin-Manuel Miranda and Alex Lacamoire enrolled, the calibrated naming):
# Lin named on 108 rows from frame 103 at lag 1, 107 from 104 at lag 2, 105 from 106 at lag 3 (a track being
# looked at is not asked about again until its answer is in; the per-frame votes before: 107 / 101 / 59).
RESULT_LAG_FRAMES = 1
# Frames a tracking lane takes at once when it is behind (`process_batch`): while one file stream waits
# for an answer that is due, the others' frames in the batch are tracked.
LANE_BATCH = 16
RESULT_WAIT_S = 30.0  # a due answer this late means a stuck worker: the request is given up (logged)
# Mean absolute difference (0-255) of consecutive 64x36 grey thumbnails at a hard cut. Measured on the
# Hamilton clip: cuts 27.7-30.4, camera moves at most 13.6; synthetic demo videos at most 7.
SCENE_CUT_DIFF = 20.0


class SceneCutDetector:
    """Tells hard cuts from motion by how much a small grey thumbnail changes from one frame to the next."""

    def __init__(self, threshold: float = SCENE_CUT_DIFF) -> None:
        self.threshold = threshold
        self._previous: np.ndarray | None = None

    def is_cut(self, frame: FramePixels | np.ndarray) -> bool:
        """Whether `frame` (a BGR array, or a ring frame in any pixel format) is a hard cut from the last."""
        pixels = frame if isinstance(frame, FramePixels) else FramePixels(frame)
        # Subsample to about twice the thumbnail before the area resize: a full 1080p INTER_AREA pass cost
        # 2.9 ms a frame on the H200 host; a stride of 6 rows 0.40 ms here, of 15 rows (this) 0.10 ms. On
        # the Hamilton clip upscaled to 1080p the cut/motion figures move by at most 0.3 (cuts 27.6-30.1,
        # camera moves at most 13.6) against a threshold of 20.
        step = max(1, pixels.shape[0] // 72)
        small = cv2.resize(pixels.every(step), (64, 36), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
        previous, self._previous = self._previous, grey
        return previous is not None and float(np.abs(grey - previous).mean()) >= self.threshold


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 2.5 us to make, this 0.8 (per track a frame)
class TrackFace:
    """One confirmed track on this frame, with its run-wide id (what the identity manager reads)."""

    track_id: int
    box: np.ndarray  # (4,) the detection box of this frame
    detection_box: np.ndarray
    landmarks: np.ndarray | None
    score: float


@dataclass
class EmbedChannel:
    """The side queues to the shared embedding worker: requests out (shared), results back (this stage's)."""

    requests: Any
    results: Any
    reply_to: int = 0  # this stage's results queue among the worker's
    sightings: Any = None  # KEEP_UNKNOWN: finished unknown sightings to the worker, which holds the store


@dataclass
class _Pending:
    request: EmbedRequest
    result: EmbedResult | None = None

    def due(self, frame: int, lag: int) -> bool:
        """Whether a file stream applies this answer on its `frame` (frames tracked, counting that one)."""
        return self.request.frame + lag <= frame


def _fill_name(faces: TrackedFaces, row: int, label: TrackLabel) -> None:
    """Look-ahead: a held frame's pending row takes the name its track was given since."""
    faces.names[row] = label.name
    faces.statuses[row] = label.status
    faces.similarities[row] = math.nan if label.similarity is None else float(label.similarity)


class StreamTracks:
    """One stream's tracking state: its tracker, scene-cut detector, identity memory and id numbering."""

    def __init__(self, tracker_config: TrackerConfig, identities: Any, fps: float, live: bool) -> None:
        from app.tracking import ByteTracker

        self.fps = fps
        self.live = live
        self.tracker_config = tracker_config
        self.tracker = ByteTracker(tracker_config, frame_rate=fps)
        self.cuts = SceneCutDetector()
        self.identities = identities
        self.segment = 0
        self.id_offset = 0  # ids of the trackers before the last cut or gap
        self.max_id = 0
        self.scene_cuts = 0
        self.frame = 0  # frames tracked (placeholders not counted): embed requests are timed in these
        self.pending: dict[int, _Pending] = {}  # request id -> request sent, answer when it came
        self.keeper: Any = None  # this camera's UnknownKeeper (KEEP_UNKNOWN)
        self.lookahead: NameLookahead[TrackedFaces] | None = None  # a file's held outputs (NAME_LOOKAHEAD)
        self.last_boxes: list[np.ndarray] = []  # the tracks' boxes on the last frame (REFIND_MISSED)

    def new_tracker(self) -> None:
        """Ids go on after the highest one given so far."""
        from app.tracking import ByteTracker

        self.id_offset = self.max_id
        self.tracker = ByteTracker(self.tracker_config, frame_rate=self.fps)
        self.last_boxes = []  # (nothing to find again across a cut or a gap)

    def in_flight(self) -> set[int]:
        return {t for p in self.pending.values() for t in p.request.track_ids}


@dataclass
class _Answers:
    """What the identity policy gets on a frame: embeddings, matches and the faces' qualities by track."""

    embeddings: dict[int, np.ndarray] = field(default_factory=dict)
    matches: dict[int, list] = field(default_factory=dict)
    qualities: dict[int, float] = field(default_factory=dict)
    chips: np.ndarray | None = None  # the aligned faces of `embeddings`, in its order (kept unknown faces)


class RecognizeStage:
    name = "recognize"
    capabilities = Capabilities(starts=True, batched=True, drains=True)
    max_batch = LANE_BATCH

    def __init__(
        self,
        frames: FrameRingHandle | StreamRings,
        settings: Settings,
        threads: int | None = None,
        identity_config: IdentityConfig | None = None,
        gallery_backoff: BackoffPolicy = GALLERY_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        embed: EmbedChannel | None = None,
        result_lag: int = RESULT_LAG_FRAMES,
        lookahead: int = 0,
    ) -> None:
        self.frames = frames if isinstance(frames, StreamRings) else StreamRings(frames)
        self.settings = settings
        self.identity_config = identity_config  # None = the tracking package's defaults
        self.channel = embed
        self.result_lag = max(1, int(result_lag))
        self.lookahead = max(0, int(lookahead))  # NAME_LOOKAHEAD: file streams' outputs held this many frames
        # In-process embedding when there is no worker; with one, only the spec (threshold, chip size).
        self.embedder = FaceEmbedder(settings, threads, gallery_backoff, clock)
        self.streams: dict[int, StreamTracks] = {}
        self._sources: dict[int, SourceInfo] = {}
        self._requests = itertools.count(1)
        self._gallery_unavailable = False  # the worker's latest word
        self.embedded_faces = 0
        self.given_up = 0
        self.unknowns: Any = None  # keeps the best faces of unknown tracks (KEEP_UNKNOWN), one store for all
        self.refiner: Any = None
        self._refind = False  # REFIND_MISSED with a refiner (setup)
        self._refind_cap = 0.0
        self.refound = 0  # small faces the detector missed, found again on a crop (REFIND_MISSED)

    # The in-process embedder's gallery and spec (one-process use and tests).
    @property
    def gallery(self) -> Any:
        return self.embedder.gallery

    @gallery.setter
    def gallery(self, value: Any) -> None:
        self.embedder.gallery = value

    @property
    def gallery_outages(self) -> int:
        return self.embedder.gallery_outages

    def setup(self) -> dict[str, object]:
        from app.recognition.analyzer import landmark_refiner
        from app.recognition.identity import TrackIdentities
        from app.vision.alignment import align_faces

        self._align = align_faces
        self.refiner = landmark_refiner(self.settings)  # small faces' landmarks, found again for their chips
        self._refind = self.settings.refind_missed and self.refiner is not None
        info = self.embedder.setup() if self.channel is None else self._spec_only()
        spec = self.spec
        self.tracker_config = TrackerConfig.from_settings(self.settings)
        self._refind_cap = refind_score_cap(self.tracker_config)
        identity = self.identity_config or IdentityConfig()
        self._identity_config = identity
        self._new_identities = lambda: TrackIdentities(identity, threshold=spec.threshold, metric=spec.metric)
        from app.recognition.unknowns import SightingSender, start_recorder

        if self.channel is not None and self.channel.sightings is not None:
            # The store is the worker's (one for every lane); the keepers stay here, by the tracks.
            self.unknowns = SightingSender(self.channel.sightings, self.channel.reply_to)
        else:
            self.unknowns = start_recorder(
                self.settings, spec, identity, camera=mask_url(self.settings.video_source)
            )
        # Alignment warps are tiny: OpenCV's thread pool only adds contention with the other stages.
        cv2.setNumThreads(1)
        return info

    def _spec_only(self) -> dict[str, object]:
        """The embedder's spec without loading it for inference (the worker runs it): chip size, threshold."""
        from app.recognition.embedder import configured_spec

        spec = self.embedder.spec = configured_spec(self.settings)
        return {"embedder": spec.model_id, "threshold": spec.threshold, "worker": True}

    @property
    def spec(self) -> Any:
        return self.embedder.spec

    def start(self, sources: dict[int, SourceInfo]) -> None:
        """Each stream's tracker runs at its source's FPS (the lost-track buffer is counted in frames)."""
        self._sources = {int(i): info for i, info in sources.items()}
        for stream in self._sources:
            self._stream(stream)
        # Only file cameras wait for answers; with live ones alone a batch would only hold every frame's
        # output until the batch's last is done (latency for nothing): one frame at a time, as before.
        files = any(not info.live for info in self._sources.values())
        self.max_batch = LANE_BATCH if self.channel is not None and files else 1

    def _stream(self, stream: int) -> StreamTracks:
        state = self.streams.get(stream)
        if state is None:
            info = self._sources.get(stream)
            fps = float(info.fps or 30.0) if info is not None else 30.0
            live = bool(info.live) if info is not None else False
            state = StreamTracks(self.tracker_config, self._new_identities(), fps, live)
            if not live and self.lookahead:
                slots = self.frames.ring(stream).slots
                if slots > self.lookahead + 2:
                    state.lookahead = NameLookahead(self.lookahead, _fill_name)
                else:  # holding them would leave the capture no free slot (the graph adds `held` slots)
                    log.warning("stream %d: NAME_LOOKAHEAD %d needs a ring of more than %d slots (it "
                                "has %d); names are not looked ahead", stream, self.lookahead,
                                self.lookahead + 2, slots)  # fmt: skip
            if self.unknowns is not None:
                state.keeper = self._keeper(info)
            self.streams[stream] = state
        return state

    def _keeper(self, info: SourceInfo | None) -> Any:
        """A camera's unknown-face keeper: faces are labelled with its source (masked) with one camera, with
        its name with several."""
        from app.recognition.unknowns import KeepConfig, UnknownKeeper

        if info is None:
            camera = mask_url(self.settings.video_source)
        else:
            camera = info.camera if len(self._sources) > 1 else info.source
        order = str(getattr(self.spec, "channel_order", "BGR"))
        return UnknownKeeper(KeepConfig.from_settings(self.settings), self._identity_config, camera, order)

    @property
    def identities(self) -> Any:  # the first stream's identity manager (one-camera callers and tests)
        return self._stream(min(self.streams, default=0)).identities

    @property
    def scene_cuts(self) -> int:
        return sum(state.scene_cuts for state in self.streams.values())

    def process(self, msg: FaceDetections) -> list[TrackedFaces]:
        """This frame's tracks and labels; on a file stream with look-ahead, the frames it releases."""
        state = self._stream(msg.meta.stream)
        out, track_ids, labels = self._track(state, msg)
        if state.lookahead is None:
            return [out]
        return state.lookahead.push(out, track_ids, labels, out.boxes)

    def end_stream(self, stream: int) -> list[TrackedFaces]:
        """The frames a file stream's look-ahead still holds (its end of file came)."""
        state = self.streams.get(stream)
        if state is None or state.lookahead is None:
            return []
        return state.lookahead.drain()

    def _track(
        self, state: StreamTracks, msg: FaceDetections
    ) -> tuple[TrackedFaces, list[int], dict[int, TrackLabel]]:
        """Track one frame: its output, the raw track id of each row and the labels by track id."""
        if msg.meta.status:  # a placeholder while the source is away: nothing to track on it
            return self._faces_of(TrackedFaces.empty(msg.meta)), [], {}
        ring = self.frames.ring(msg.meta.stream)
        frame = FramePixels(ring.frame(msg.meta.slot), ring.format)
        if msg.meta.segment != state.segment:
            self._new_segment(state, msg.meta.segment, msg.meta.frame_index)
        if state.cuts.is_cut(frame):  # (never right after a new segment: its detector starts fresh)
            self._restart_tracks(state, msg.meta.frame_index)
        boxes, scores, landmarks = msg.boxes, msg.scores, msg.landmarks
        if self._refind and state.last_boxes:  # REFIND_MISSED: small tracked faces the detector missed
            boxes, scores, landmarks, added = refind_missed(
                self.refiner, frame, state.last_boxes, boxes, scores, landmarks, self._refind_cap
            )
            self.refound += added
        offset = state.id_offset
        tracks = [
            TrackFace(t.track_id + offset, t.detection_box, t.detection_box, t.landmarks, t.score)
            for t in state.tracker.update(boxes, scores, landmarks)
        ]
        state.last_boxes = [t.box for t in tracks]
        if tracks:
            state.max_id = max(state.max_id, max(t.track_id for t in tracks))
        state.frame += 1
        if self.channel is None:
            answers = self._embed_now(state, tracks, frame)
        else:
            answers = self._embed_async(msg.meta.stream, state, tracks, frame)
        labels = state.identities.update(tracks, answers.embeddings, answers.matches, answers.qualities)
        if self.unknowns is not None:
            ids = list(answers.embeddings)
            kept = (
                (ids, answers.chips, np.stack([answers.embeddings[i] for i in ids]))
                if ids
                else ((), None, None)
            )
            self.unknowns.observe_for(state.keeper, frame, msg.meta.frame_index, tracks, *kept, labels)
        if not tracks:
            return self._faces_of(TrackedFaces.empty(msg.meta)), [], labels
        names, statuses, similarities, shown_ids = [], [], [], []
        for track in tracks:
            label = labels.get(track.track_id)
            # A track re-linked by face to one that vanished keeps showing the earlier id.
            shown_ids.append(label.linked_id if label is not None and label.linked_id else track.track_id)
            names.append(label.name if label is not None else None)
            statuses.append(label.status if label is not None else "pending")
            similarity = label.similarity if label is not None else None
            similarities.append(math.nan if similarity is None else float(similarity))
        out = TrackedFaces(
            meta=msg.meta,
            track_ids=np.array(shown_ids, np.int64),
            # The face as detected on this frame (the Kalman box lags a moving face by a little).
            boxes=np.array([t.box for t in tracks], dtype=np.float32),
            scores=np.array([t.score for t in tracks], np.float32),
            names=names,
            statuses=statuses,
            similarities=np.array(similarities, np.float32),
            gallery_unavailable=self._unavailable(),
        )
        return out, [t.track_id for t in tracks], labels

    def process_batch(self, msgs: list[FaceDetections]) -> list[TrackedFaces]:
        """The frames already queued, each stream's in order; while a file stream waits for an answer due on
        its next frame, the other streams' frames are tracked (one stream's wait does not hold the lane).

        What each frame gets is what `process` would give it one at a time: a file's answers are applied on
        their due frame whatever the order the streams are served in."""
        if self.channel is None or len(msgs) == 1:
            return [out for msg in msgs for out in self.process(msg)]
        waiting: dict[int, collections.deque[FaceDetections]] = {}
        outputs: list[TrackedFaces] = []
        for msg in msgs:  # in the order they came (live streams never wait: exactly that order)
            stream = msg.meta.stream
            if stream not in waiting:
                ready = not self._due(msg)
                if not ready:  # (perhaps it is back by now)
                    self._collect(block_until=None)
                    ready = not self._due(msg)
                if ready:
                    outputs += self.process(msg)
                    continue
            waiting.setdefault(stream, collections.deque()).append(msg)
        while waiting:
            self._collect(block_until=None)
            moved = False
            for stream in list(waiting):
                frames = waiting[stream]
                while frames and not self._due(frames[0]):
                    outputs += self.process(frames.popleft())
                    moved = True
                if not frames:
                    del waiting[stream]
            if not moved and waiting:
                # Every stream left waits for an answer: the one whose due request is oldest waits for it
                # (filing the others' answers meanwhile; given up after RESULT_WAIT_S, as one at a time).
                stream = min(waiting, key=lambda s: min(self._due(waiting[s][0])))
                outputs += self.process(waiting[stream].popleft())
                if not waiting[stream]:
                    del waiting[stream]
        return outputs

    def _due(self, msg: FaceDetections) -> list[int]:
        """The requests of `msg`'s stream whose answers `process(msg)` applies and has not got yet."""
        state = self.streams.get(msg.meta.stream)
        if state is None or state.live or msg.meta.status or msg.meta.segment != state.segment:
            return []  # (a new segment drops what was asked before the gap)
        upcoming = state.frame + 1  # process() counts the frame before it looks at what is due
        return [r for r, p in state.pending.items() if p.result is None and p.due(upcoming, self.result_lag)]

    def _unavailable(self) -> bool:
        return (
            self._gallery_unavailable if self.channel is not None else self.embedder.gallery_down is not None
        )

    def _faces_of(self, faces: TrackedFaces) -> TrackedFaces:
        faces.gallery_unavailable = self._unavailable()
        return faces

    # -- embedding in this process ------------------------------------------------------------------------

    def _embed_now(self, state: StreamTracks, tracks: list[TrackFace], frame: FramePixels) -> _Answers:
        answers = _Answers()
        need = state.identities.select_for_embedding(tracks, frame)
        if not need or self.embedder.paused():
            return answers  # (the gallery is away: no embedding until the next retry; the tracks ask again)
        chips = self._chips(tracks, need, frame)
        vectors = self.embedder.embed(chips)
        found = self.embedder.search(state.identities.query_vectors(need, vectors))  # track templates
        if found is not None:
            answers.embeddings = dict(zip(need, vectors, strict=True))
            answers.matches = dict(zip(need, found, strict=True))
            answers.chips = chips
            self.embedded_faces += len(need)
        return answers

    def _chips(self, tracks: list[TrackFace], need: list[int], frame: FramePixels) -> np.ndarray:
        by_id = {t.track_id: t for t in tracks}
        landmarks = np.array([by_id[i].landmarks for i in need], dtype=np.float32)
        if self.refiner is not None:
            landmarks = self.refiner.refine(frame, np.array([by_id[i].box for i in need]), landmarks)
        return self._align(frame, landmarks, self.spec)  # NV12: each chip's region converted

    # -- embedding in the shared worker -------------------------------------------------------------------

    def _embed_async(self, stream: int, state: StreamTracks, tracks: list[TrackFace], frame: FramePixels):
        self._collect(block_until=None)
        answers = _Answers()
        for request_id in sorted(state.pending):
            pending = state.pending[request_id]
            if state.live:
                if pending.result is None:
                    continue  # a live stream never waits: applied on a later frame, when it is back
            else:
                if not pending.due(state.frame, self.result_lag):
                    continue  # not due yet (applied on exactly its frame: a file's run is reproducible)
                if pending.result is None and not self._collect(block_until=(stream, request_id)):
                    self.given_up += 1
                    log.warning("no embedding answer for request %d after %.0f s; given up", request_id,
                                RESULT_WAIT_S)  # fmt: skip
                    del state.pending[request_id]
                    continue
            done = state.pending.pop(request_id)
            result = done.result
            assert result is not None
            if result.matches is None:
                continue  # the gallery did not answer: the tracks ask again
            for i, track_id in enumerate(result.track_ids):
                answers.embeddings[track_id] = result.vectors[i]
                answers.matches[track_id] = result.matches[i]
                answers.qualities[track_id] = result.qualities[i]
            chips = done.request.chips
            answers.chips = chips if answers.chips is None else np.concatenate([answers.chips, chips])
            self.embedded_faces += len(result.track_ids)
        identities = state.identities
        busy = state.in_flight()
        need = [t for t in identities.select_for_embedding(tracks, frame) if t not in busy]
        if need:
            qualities = [float(identities.selected_quality(t) or 0.5) for t in need]
            # The worker searches with each track's template (its kept embeddings with the new one folded in).
            templates = [TemplateParts.pack(identities.template_parts(t)) for t in need]
            request = EmbedRequest(next(self._requests), stream, state.frame, need, qualities,
                                   self._chips(tracks, need, frame), self.channel.reply_to,
                                   templates)  # fmt: skip
            if self._send(request, wait=not state.live):
                state.pending[request.request] = _Pending(request)
        return answers

    def _send(self, request: EmbedRequest, wait: bool) -> bool:
        assert self.channel is not None
        try:
            if wait:
                self.channel.requests.put(request, timeout=RESULT_WAIT_S)
            else:
                self.channel.requests.put_nowait(request)
            return True
        except queue.Full:
            return False  # a live stream's tracks ask again on a later frame

    def _collect(self, block_until: tuple[int, int] | None) -> bool:
        """File the answers that are back; with `block_until` (stream, request), wait for that one too.

        False when it did not come within RESULT_WAIT_S."""
        assert self.channel is not None
        deadline = time.monotonic() + RESULT_WAIT_S
        while True:
            if block_until is not None:
                stream, request_id = block_until
                pending = self.streams[stream].pending.get(request_id)
                if pending is None or pending.result is not None:
                    return True
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return False
                try:
                    result = self.channel.results.get(timeout=min(timeout, 0.5))
                except queue.Empty:
                    continue
            else:
                try:
                    result = self.channel.results.get_nowait()
                except queue.Empty:
                    return True
            self._gallery_unavailable = result.gallery_unavailable
            state = self.streams.get(result.stream)
            target = state.pending.get(result.request) if state is not None else None
            if target is not None:  # else: asked before a gap or a cut the stream has since had
                target.result = result

    # -- gaps and cuts ------------------------------------------------------------------------------------

    def _new_segment(self, state: StreamTracks, segment: int, frame_index: int) -> None:
        """The source had a gap: no track and no identity vote carries over; ids continue."""
        state.segment = segment
        state.new_tracker()
        before = state.identities.counters
        state.identities.reset()
        state.identities.counters = before  # run totals for the closing log line
        state.cuts = SceneCutDetector()
        state.pending = {}  # answers about tracks that no longer exist
        if self.unknowns is not None:
            self.unknowns.reset_for(state.keeper)
        log.info("source gap before frame %d: tracks and identities reset, ids go on after %d",
                 frame_index, state.id_offset)  # fmt: skip

    def _restart_tracks(self, state: StreamTracks, frame_index: int) -> None:
        """A hard cut: no track continues across it; new ids follow the highest one given so far."""
        state.scene_cuts += 1
        state.new_tracker()
        log.debug("scene cut at frame %d: tracks restart after id %d", frame_index, state.id_offset)

    def close(self) -> None:
        if self.unknowns is not None:
            for state in self.streams.values():
                self.unknowns.finish_for(state.keeper)
            self.unknowns.close()
            self.unknowns = None
        if self.channel is None:
            self.embedder.close()
        elif hasattr(self.channel.requests, "cancel_join_thread"):
            self.channel.requests.cancel_join_thread()  # requests nobody will answer after the run
        if self.streams:
            counters = [state.identities.counters for state in self.streams.values()]
            kinds = ("tracks", "embeddings", "named", "relinks")
            totals = [sum(getattr(c, k) for c in counters) for k in kinds]
            log.info("recognition: %d tracks, %d faces embedded, %d named, %d re-linked, %d scene cuts, "
                     "%d missed faces found again", *totals, self.scene_cuts, self.refound)  # fmt: skip
        self.frames.close()
