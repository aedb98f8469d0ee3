"""Typed messages of the pipeline: frame messages between stages, control messages with the supervisor.

Frame pixels never travel in a message: they stay in the shared-memory ring (`frame_ring.py`) and a message
names the slot and the sequence number the slot held when the frame was written. Every stage appends one
`StageStamp` to `FrameMeta.stamps`, so the sink can hand the supervisor the frame's whole timing history.

Every frame message carries its stream (`FrameMeta.stream`, the camera's index in the run's camera list):
one run may serve several cameras through shared stages, and all per-stream state downstream is keyed by it.

Times are `time.monotonic()` seconds: CLOCK_MONOTONIC is one clock for all processes of the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StageStamp:
    stage: str
    start: float  # the stage took the message from its queue (capture: started reading the frame)
    end: float  # the stage's output is ready


@dataclass
class FrameMeta:
    """Where a frame is and where it came from; travels, unchanged but for `stamps`, through every stage."""

    slot: int  # ring slot holding the pixels
    seq: int  # the slot's sequence number when written; a mismatch means the frame was dropped
    frame_index: int  # 0-based index in the source (live sources: frames read, dropped ones included)
    source_time: float  # seconds from the start of the source (file: frame_index / fps)
    width: int
    height: int
    stamps: list[StageStamp] = field(default_factory=list)
    # A live source's continuous stretch: capture adds 1 after every gap (a reconnect, a restarted capture
    # process). Per-stream state (tracker, identities) must not span a change; a counter rather than a flag
    # on one frame, because that frame may be dropped on its way.
    segment: int = 0
    # Non-empty on a placeholder frame sent while the source is away (e.g. "reconnecting to ..."): the pixels
    # are the last frame dimmed, not the source's; stages skip it and the GUI shows the text.
    status: str = ""
    stream: int = 0  # which camera (index in the run's camera list); picks the ring and per-stream state
    # Set by the sink for the parent's metrics (the JSON summary and /metrics): faces shown on the frame, the
    # statuses of the recognition events it made, and whether the gallery was answering.
    faces: int = 0
    recognitions: tuple[str, ...] = ()
    gallery_unavailable: bool = False


@dataclass
class FrameRef:
    """capture -> detect: a new frame is in the ring."""

    meta: FrameMeta


@dataclass
class RawDetections:
    """detect -> postprocess: the detector's raw outputs for one frame (no batch axis)."""

    meta: FrameMeta
    loc: np.ndarray  # (P,4)
    conf: np.ndarray  # (P,2)
    landmarks: np.ndarray  # (P,10)
    scale: float  # detector input pixel = source pixel * scale
    input_hw: tuple[int, int]


@dataclass
class CandidateDetections(RawDetections):
    """detect -> postprocess: only the priors whose face score passed `floor` (~0.1-20 KB, not 1 MB a frame).

    `loc`, `conf`, `landmarks` hold those K rows of the raw outputs, `prior_index` (K,) ascending says which
    priors they are out of `priors`; every other prior scored <= floor. Decoded as they are (the decoder
    takes the prior index), they give the same faces as the full outputs for any score threshold >= floor.
    """

    prior_index: np.ndarray  # (K,) int64
    priors: int  # P, the number of priors of the detector input
    floor: float


@dataclass
class FaceDetections:
    """postprocess -> recognize: decoded faces in source pixels, best score first."""

    meta: FrameMeta
    boxes: np.ndarray  # (N,4) float32 x1,y1,x2,y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N,5,2) float32


@dataclass
class TrackedFaces:
    """recognize -> gui/sinks: the faces shown on this frame, one row per confirmed track."""

    meta: FrameMeta
    track_ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N,4) float32, source pixels
    scores: np.ndarray  # (N,) float32 detection scores
    names: list[str | None]  # a person's name, or None (unknown or not decided yet)
    statuses: list[str]  # "known" | "unknown" | "pending" (not enough evidence yet)
    similarities: np.ndarray  # (N,) float32, NaN where there is no match to report
    gallery_unavailable: bool = False  # the gallery server is not answering: names paused, tracking goes on

    @classmethod
    def empty(cls, meta: FrameMeta) -> TrackedFaces:
        return cls(
            meta,
            np.zeros((0,), np.int64),
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            [],
            [],
            np.zeros((0,), np.float32),
        )

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])


@dataclass
class EndOfStream:
    """Follows the last frame through every stage; the sink reports it to the supervisor."""

    reason: str  # e.g. "end of file"
    frames: int  # frames the source delivered
    stream: int = 0  # the stream that ended; the others go on


FrameMessage = FrameRef | RawDetections | FaceDetections | TrackedFaces


@dataclass
class FrameBatch:
    """Several frame messages for one queue, sent as one item: the outputs of one detector call, or of the
    frames a stage worked through while more were waiting. One queue put, one pipe write and one wake-up of
    the next stage instead of one each (each cost ~0.1-0.4 ms of CPU a frame in a stage process). The stage
    runner packs and unpacks them; stages only ever see the messages, in order. Never holds an EndOfStream.
    """

    messages: list[Any]


# -- tracking <-> embedding worker (side channel) ---


@dataclass
class EmbedRequest:
    """recognize -> embed: aligned face chips of some tracks of one frame, to embed and look up."""

    request: int  # unique per requesting stage; the answer carries it
    stream: int
    frame: int  # the stream's frame counter at the request (the tracker's, not the source's index)
    track_ids: list[int]
    qualities: list[float]  # the identity policy's quality of each face when it was picked
    chips: np.ndarray  # (N,h,w,3) uint8, the embedder's input size and channel order
    reply_to: int = 0  # which results queue (one per tracking stage) the answer goes to
    # Per track, the (quality, vector) embeddings of its template (None: no template yet): the worker searches
    # the gallery with the template that the new embedding joins (identity.template_with), as in-process
    # recognition does.
    templates: list[TemplateParts | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TemplateParts:
    """A track's template embeddings as two arrays: pickled as one (n,) and one (n, dim) array instead of n
    tuples of a float and a small array (a request of 10 tracks with 12 each: 64 instead of 338 us to pickle
    and unpickle). `unpack` gives back the same floats and vectors, so the template comes out the same."""

    qualities: np.ndarray  # (n,) float64
    vectors: np.ndarray  # (n, dim), the embeddings' dtype

    @classmethod
    def pack(cls, parts: list[tuple[float, np.ndarray]]) -> TemplateParts | None:
        if not parts:
            return None
        return cls(np.array([q for q, _ in parts], np.float64), np.stack([v for _, v in parts]))

    def unpack(self) -> list[tuple[float, np.ndarray]]:
        return [(float(q), v) for q, v in zip(self.qualities, self.vectors, strict=True)]


@dataclass
class EmbedResult:
    """embed -> recognize: the embeddings and gallery matches of one request.

    `matches` None: the gallery did not answer (a server away); the vectors are then not used either, and
    `gallery_unavailable` tells the GUI."""

    request: int
    stream: int
    frame: int
    track_ids: list[int]
    qualities: list[float]
    vectors: np.ndarray  # (N,dim) float32
    matches: list[list[Any]] | None  # per track: best-first gallery Match per person (a domain type)
    gallery_unavailable: bool = False


@dataclass(frozen=True)
class SourceInfo:
    """What a capture stage found when it opened its source (its `Ready` info), per stream."""

    frame_shape: tuple[int, int, int] | None  # None: a restarted capture whose source is still away
    fps: float
    live: bool
    source: str  # for messages: credentials masked
    frame_count: int | None = None  # frames a file's container declares
    restarted: bool = False
    stream: int = 0
    camera: str = "default"
    # How its ring stores frames (app.vision.pixel_format): "bgr", or "nv12" where NVDEC decodes for a GPU
    # detector that converts there. frame_shape stays the picture's (H, W, 3) either way.
    pixel_format: str = "bgr"


# -- supervisor -> stage ---


@dataclass
class Start:
    """All stages are ready and every ring exists: go.

    `sources`: the streams this run serves, stream -> its capture's SourceInfo (a stage hosting several
    streams sizes its per-stream state from it). `notes`: streams that could not start, stream -> why (the
    window shows it in their tile). A stage's input ends after an EndOfStream from every stream in `sources`
    (no sources: one stream, 0).
    """

    sources: dict[int, SourceInfo] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)

    @property
    def streams(self) -> set[int]:
        return set(self.sources) or {0}


# -- stage -> supervisor -------------------------------------------------------------------------------------


@dataclass
class Ready:
    """The stage finished setup(); `info` carries what the supervisor needs (capture: frame shape, fps...)."""

    stage: str
    info: dict[str, object] | SourceInfo


@dataclass
class Started:
    """The stage's start(sources) is done (the detector's rings page-locked, its input fitted): the sources
    are started only after every such stage, so no camera's first second piles up behind that work."""

    stage: str


@dataclass
class FrameDone:
    """The sink finished a frame; carries its timing history for the metrics."""

    meta: FrameMeta


@dataclass
class FramesDone:
    """The sink finished several frames at once (the supervisor counts each as a `FrameDone`)."""

    metas: list[FrameMeta]


@dataclass
class Finished:
    """The stage asks for an orderly stop: end of stream reached the sink, the window was closed..."""

    stage: str
    reason: str
    stream: int | None = None  # set: only this stream ended (its end of stream reached the sink)


@dataclass
class Failed:
    """setup() or process() raised; `message` is one line."""

    stage: str
    message: str
    during_setup: bool
    user_error: bool  # a UserError: bad input or environment, no traceback wanted
