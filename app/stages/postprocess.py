"""Post-processing stage: RetinaFace decode (priors), score filter and NMS -> faces in source pixels.

The score filter keeps every candidate the tracker can use: ByteTrack's second association wants the
low-score boxes (blurred or turning faces) too, so the floor is the lower of `det_threshold` and the
tracker's low threshold; which boxes start tracks and get shown is the tracker's decision.

Cameras may override the score threshold and set a minimum face size (`score_thresholds`, `min_faces`, by
stream): faces whose box's short side is below that many source pixels are dropped here, before tracking.

From the detection stage it gets `CandidateDetections` (only the priors above the detect stage's floor, on
both the CPU and the GPU path); the decoder takes them as they are, with their prior index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from app.pipeline.messages import CandidateDetections, FaceDetections, RawDetections

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
        self._warned_floor = False

    def setup(self) -> dict[str, object]:
        from app.vision.retinaface import decode_retinaface

        self._decode = decode_retinaface
        return {"score_threshold": self.score_threshold}

    def process(self, msg: RawDetections) -> list[FaceDetections]:
        meta = msg.meta
        prior_index = None
        if isinstance(msg, CandidateDetections):
            self._check_floor(msg.floor)
            prior_index = msg.prior_index
        found = self._decode(
            msg.loc,
            msg.conf,
            msg.landmarks,
            msg.scale,
            msg.input_hw,
            self.score_thresholds.get(meta.stream, self.score_threshold),
            self.nms_threshold,
            (meta.width, meta.height),
            prior_index,
        )
        found = found.at_least(self.min_faces.get(meta.stream, 0))
        return [FaceDetections(meta, found.boxes, found.scores, found.landmarks)]

    def _check_floor(self, floor: float) -> None:
        if floor > self.score_threshold and not self._warned_floor:
            log.warning(
                "detection keeps candidates above %.3f but the score threshold is %.3f: faces in between "
                "are lost",
                floor,
                self.score_threshold,
            )
            self._warned_floor = True

    def close(self) -> None:
        pass
