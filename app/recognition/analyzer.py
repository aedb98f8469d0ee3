"""FaceAnalyzer: detector + embedder behind two calls, for enrolment, evaluation and single-process use.

The pipeline's stages use the same pieces (letterbox, decode_retinaface, align_faces, spec) split across
processes; this class keeps them together for code that just wants faces and embeddings from an image.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from app.config import Settings
from app.inference.backend import load_model
from app.inference.interface import Model
from app.inference.spec import EmbedderSpec
from app.recognition.embedder import load_embedder
from app.vision.alignment import align_faces
from app.vision.landmark_refine import INPUT_SIZE, LandmarkRefiner, RefineConfig
from app.vision.retinaface import (
    Detections,
    RetinaFacePostprocessor,
    RetinaFacePreprocessor,
)

log = logging.getLogger(__name__)

# A face filling a tight crop (a face photo cut at the chin and hairline, as face libraries store them) is
# found, but RetinaFace places its landmarks badly with no context around it, and the embedder's chip reaches
# past the photo's edges. Photos are looked at again with their edge pixels extended (a margin), and dlib's
# chips extend them too (`embed_photo`), as a camera would show more of the same scene there. On the identity
# photos (most are 150x150 crops) this raised identification at 1 % strangers from 0.86 to 0.95 (dlib, 1
# photo enrolled); a margin of 0.3 identified more than 0.15 or 0.5.
TIGHT_FILL = 0.5  # a face box this share of the photo's width or height (or no face found): look again
TIGHT_MARGIN = 0.3  # the margin added on every side, as a share of the photo's long side


class FaceAnalyzer:
    """Detects faces (RetinaFace) and embeds them (dlib or ArcFace) as `settings` says.

    `.spec.threshold` is `settings.match_threshold` when that is set, else the embedder's measured default.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.detector: Model = load_model(settings.detector_model, settings.backend, settings.threads)
        self.embedder: Model
        self.spec: EmbedderSpec
        self.embedder, self.spec = load_embedder(settings)
        self.preprocessor = RetinaFacePreprocessor.for_model(self.detector, settings.det_size)
        self.postprocessor = RetinaFacePostprocessor(
            self.preprocessor.input_hw, settings.det_threshold, settings.nms_threshold
        )

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Faces in one BGR uint8 image (a video frame), best score first, in image pixels."""
        return self.detect_batch([image_bgr])[0]

    def detect_photo(self, image_bgr: np.ndarray) -> Detections:
        """Faces in a photo (enrolment, identification, calibration), as `detect`; a photo whose face fills it
        (or where no face is found) is looked at again with a margin around it (`TIGHT_FILL`,
        `TIGHT_MARGIN`), and those detections are used when that finds a face."""
        found = self.detect(image_bgr)
        if not _tight(found, image_bgr.shape[:2]):
            return found
        h, w = image_bgr.shape[:2]
        margin = int(round(TIGHT_MARGIN * max(h, w)))
        framed = cv2.copyMakeBorder(image_bgr, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
        again = self.detect_batch([framed])[0]
        if not len(again):
            return found
        return Detections(again.boxes - margin, again.scores, again.landmarks - margin)

    def detect_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in several images with one detector call (all are letterboxed to the same input size)."""
        if not images_bgr:
            return []
        h, w = self.preprocessor.input_hw
        batch = np.empty((len(images_bgr), 3, h, w), np.float32)
        scales = [self.preprocessor(image, out=batch[i])[1] for i, image in enumerate(images_bgr)]
        outputs = self.detector.run(batch)
        sizes = [(image.shape[1], image.shape[0]) for image in images_bgr]
        return self.postprocessor(outputs, scales, sizes)

    def embed(
        self, image_bgr: np.ndarray, landmarks: np.ndarray, boxes: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, dim) float32 embeddings for the faces with `landmarks` (N,5,2), in one batched model call;
        `boxes` as in `frame_chips`."""
        return self.embed_chips(self.frame_chips(image_bgr, landmarks, boxes))

    def frame_chips(
        self, image_bgr: np.ndarray, landmarks: np.ndarray, boxes: np.ndarray | None = None
    ) -> np.ndarray:
        """Aligned chips of a video frame's faces. With their `boxes` (N,4), the small ones' landmarks are
        found again first, as the tracking lanes do (`settings.refine_below`: `landmark_refiner`)."""
        landmarks = self._landmarks(landmarks)
        if boxes is not None and self.refiner is not None:
            landmarks = self.refiner.refine(image_bgr, boxes, landmarks)
        return align_faces(image_bgr, landmarks, self.spec)

    @functools.cached_property
    def refiner(self) -> LandmarkRefiner | None:
        """The small-face landmark refiner (`landmark_refiner`), loaded on first use: only video frames
        need it."""
        return landmark_refiner(self.settings)

    def photo_chips(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Aligned chips of a photo's faces: pixels past the photo's edges repeat its edge pixels where the
        embedder measured better so (`spec.photo_edge`: dlib), else black as for frames."""
        return align_faces(image_bgr, self._landmarks(landmarks), self.spec, edge=self.spec.photo_edge)

    def embed_photo(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """`embed` for a photo, from its `photo_chips`."""
        return self.embed_chips(self.photo_chips(image_bgr, landmarks))

    @staticmethod
    def _landmarks(landmarks: np.ndarray) -> np.ndarray:
        return np.asarray(landmarks, np.float32).reshape(-1, 5, 2)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings of already aligned chips (N,h,w,3) uint8 in the spec's channel order."""
        if chips.shape[0] == 0:
            return np.zeros((0, self.spec.dim), np.float32)
        raw = self.embedder.run(self.spec.preprocess(chips))[0]
        return self.spec.postprocess(raw)


def landmark_refiner(settings: Settings) -> LandmarkRefiner | None:
    """The small-face landmark refiner of the settings (None when `refine_below` is 0): its own ONNX Runtime
    session of `refine_model_path` on one CPU thread (crops of any size; a few faces a second, wherever the
    detector itself runs). A model that cannot take square crops (an engine file, a fixed non-square input)
    gives none: small faces are then aligned from the frame's landmarks, as with `refine_below` 0."""
    if settings.refine_below <= 0:
        return None
    path = refine_model_path(settings)
    if path.suffix.lower() != ".onnx":
        log.warning("REFINE_BELOW: the detector %s is not an ONNX file; small faces keep the frame's "
                    "landmarks (set REFINE_BELOW=0 to silence this)", path.name)  # fmt: skip
        return None
    detector = load_model(path, "onnxruntime", threads=1)
    fixed = detector.inputs[0].fixed_hw
    if fixed is not None and fixed[0] != fixed[1]:
        log.warning("REFINE_BELOW: the detector %s takes only %dx%d inputs; small faces keep the frame's "
                    "landmarks (set REFINE_BELOW=0 to silence this)", path.name, *fixed[::-1])  # fmt: skip
        return None
    size = INPUT_SIZE if fixed is None else int(fixed[0])
    config = RefineConfig(float(settings.refine_below), input_size=size)
    return LandmarkRefiner(detector, config, settings.nms_threshold)


def refine_model_path(settings: Settings) -> Path:
    """REFINE_MODEL, else the bundled mnet0.25 (DETECTOR_MODEL's default) where it is, else DETECTOR_MODEL.

    The crops are detected on one CPU thread inside the tracking lane, so a heavy DETECTOR_MODEL must not
    follow: measured on an H100 host, RetinaFace-R50 there took 40-70 ms a crop (mnet0.25: 2 ms), and every
    lane of 16 live cameras stalled 80-110 ms a frame whenever small faces came in (end-to-end p99 276-407 ms
    instead of ~55)."""
    if settings.refine_model is not None:
        return Path(settings.refine_model)
    bundled = Path(Settings().detector_model)
    return bundled if bundled.is_file() else Path(settings.detector_model)


def _tight(found: Detections, image_hw: tuple[int, int]) -> bool:
    """No face, or the largest one fills `TIGHT_FILL` of the image's width or height."""
    index = found.largest()
    if index is None:
        return True
    x1, y1, x2, y2 = found.boxes[index]
    h, w = image_hw
    return bool(max((x2 - x1) / w, (y2 - y1) / h) >= TIGHT_FILL)
