"""Post-processing stage: RetinaFace decode (priors), score filter and NMS -> faces in source pixels.

The score filter keeps every candidate the tracker can use: ByteTrack's second association wants the
low-score boxes (blurred or turning faces) too, so the floor is the lower of `det_threshold` and the
tracker's low threshold; which boxes start tracks and get shown is the tracker's decision.
"""

from __future__ import annotations

from app.pipeline.messages import FaceDetections, RawDetections


class PostprocessStage:
    name = "postprocess"

    def __init__(self, score_threshold: float, nms_threshold: float) -> None:
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)

    def setup(self) -> dict[str, object]:
        from app.vision.retinaface import decode_retinaface

        self._decode = decode_retinaface
        return {"score_threshold": self.score_threshold}

    def process(self, msg: RawDetections) -> list[FaceDetections]:
        meta = msg.meta
        found = self._decode(
            msg.loc,
            msg.conf,
            msg.landmarks,
            msg.scale,
            msg.input_hw,
            self.score_threshold,
            self.nms_threshold,
            (meta.width, meta.height),
        )
        return [FaceDetections(meta, found.boxes, found.scores, found.landmarks)]

    def close(self) -> None:
        pass
