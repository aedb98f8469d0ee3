"""Post-processing stage: RetinaFace decode (priors), score filter and NMS -> faces in source pixels.

The score filter keeps every candidate the tracker can use: ByteTrack's second association wants the
low-score boxes (blurred or turning faces) too, so the floor is the lower of `det_threshold` and the
tracker's low threshold; which boxes start tracks and get shown is the tracker's decision.

Cameras may override the score threshold and set a minimum face size (`score_thresholds`, `min_faces`, by
stream): faces whose box's short side is below that many source pixels are dropped here, before tracking.

From the GPU detection path the stage gets `CandidateDetections` (only the priors above the detect stage's
floor); they are scattered back into full-size buffers, so the one decoder runs on both paths.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from app.pipeline.messages import FaceDetections, RawDetections
from app.stages.detect import CandidateDetections

log = logging.getLogger(__name__)


class PostprocessStage:
    name = "postprocess"

    def __init__(
        self,
        score_threshold: float,
        nms_threshold: float,
        score_thresholds: Mapping[int, float] | None = None,
        min_faces: Mapping[int, int] | None = None,
    ) -> None:
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.score_thresholds = {int(k): float(v) for k, v in (score_thresholds or {}).items()}
        self.min_faces = {int(k): int(v) for k, v in (min_faces or {}).items()}
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._last_index: dict[int, np.ndarray] = {}
        self._warned_floor = False

    def setup(self) -> dict[str, object]:
        from app.vision.retinaface import decode_retinaface

        self._decode = decode_retinaface
        return {"score_threshold": self.score_threshold}

    def process(self, msg: RawDetections) -> list[FaceDetections]:
        meta = msg.meta
        loc, conf, landmarks = msg.loc, msg.conf, msg.landmarks
        if isinstance(msg, CandidateDetections):
            loc, conf, landmarks = self._expand(msg)
        found = self._decode(
            loc,
            conf,
            landmarks,
            msg.scale,
            msg.input_hw,
            self.score_thresholds.get(meta.stream, self.score_threshold),
            self.nms_threshold,
            (meta.width, meta.height),
        )
        found = found.at_least(self.min_faces.get(meta.stream, 0))
        return [FaceDetections(meta, found.boxes, found.scores, found.landmarks)]

    def _expand(self, msg: CandidateDetections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full (P,4), (P,2), (P,10) arrays holding the candidates; every other prior scores 0."""
        if msg.floor > self.score_threshold and not self._warned_floor:
            log.warning(
                "detection keeps candidates above %.3f but the score threshold is %.3f: faces in between "
                "are lost",
                msg.floor,
                self.score_threshold,
            )
            self._warned_floor = True
        p = msg.priors
        if p not in self._buffers:
            self._buffers[p] = (np.zeros((p, 4), np.float32), np.zeros((p, 2), np.float32),
                                np.zeros((p, 10), np.float32))  # fmt: skip
            self._last_index[p] = np.zeros((0,), np.int64)
        loc, conf, landmarks = self._buffers[p]
        # Only scores decide what is decoded: clearing the last frame's candidate scores is enough.
        conf[self._last_index[p]] = 0.0
        index = msg.prior_index
        loc[index] = msg.loc
        conf[index] = msg.conf
        landmarks[index] = msg.landmarks
        self._last_index[p] = index
        return loc, conf, landmarks

    def close(self) -> None:
        pass
