"""Detection stage: model inference only. Letterboxes each frame from the ring and runs RetinaFace in batches.

When the stage falls behind, the runner hands it every frame already queued (up to `max_batch`) and they go
through the model in one call; an idle pipeline never waits to fill a batch. Decoding the raw outputs is the
post-processing stage's job, so this process spends its time in the model.

Each frame is claimed from the ring here: a live frame overwritten while it waited in the queue fails the
claim and is skipped (the ring already counted it as dropped).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from app.errors import UserError
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.messages import FrameRef, RawDetections

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 4


class DetectStage:
    name = "detect"

    def __init__(
        self,
        frames: FrameRingHandle,
        model_path: Path,
        backend: str = "onnxruntime",
        threads: int = 0,
        det_size: int = 640,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.frames = frames
        self.model_path = Path(model_path)
        self.backend = backend
        self.threads = threads
        self.det_size = det_size
        self.max_batch = max(1, int(max_batch))
        self.model = None

    def setup(self) -> dict[str, object]:
        # Imported here: the runtime (and any GPU context) lives in this process only.
        from app.inference.backend import load_model
        from app.vision.retinaface import RetinaFacePreprocessor, split_outputs

        self.model = load_model(self.model_path, self.backend, self.threads)
        self.preprocess = RetinaFacePreprocessor.for_model(self.model, self.det_size)
        self._split = split_outputs
        fixed = self.model.inputs[0].fixed_batch
        if fixed is not None:
            self.max_batch = 1 if fixed == 1 else min(self.max_batch, fixed)
            self._fixed_batch = fixed
        else:
            self._fixed_batch = None
        h, w = self.preprocess.input_hw
        self._buffer = np.zeros((self._fixed_batch or self.max_batch, 3, h, w), np.float32)
        # One warm-up call: the first run of a session is slow, and a wrong model fails here, at start.
        try:
            self._split(self.model.run(self._buffer[: self._fixed_batch or 1]))
        except ValueError as exc:
            message = f"{self.model_path} is not a RetinaFace detector ({exc}); check DETECTOR_MODEL"
            raise UserError(message) from None
        return {"input_hw": (h, w), "max_batch": self.max_batch}

    def process(self, msg: FrameRef) -> list[RawDetections]:
        return self.process_batch([msg])

    def process_batch(self, msgs: list[FrameRef]) -> list[RawDetections]:
        ring = self.frames.ring
        frames = [m for m in msgs if ring.claim(m.meta.slot, m.meta.seq)]
        if not frames:
            return []
        n = len(frames)
        scales = [
            self.preprocess(ring.frame(m.meta.slot), out=self._buffer[i])[1] for i, m in enumerate(frames)
        ]
        batch = self._buffer[: self._fixed_batch or n]
        loc, conf, landmarks = self._split(self.model.run(batch))
        hw = self.preprocess.input_hw
        return [
            RawDetections(m.meta, loc[i], conf[i], landmarks[i], scales[i], hw) for i, m in enumerate(frames)
        ]

    def close(self) -> None:
        self.model = None
        self.frames.close()
