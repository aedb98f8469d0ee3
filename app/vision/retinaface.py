"""RetinaFace (biubug6 export) pre- and post-processing: letterbox, prior boxes, box/landmark decode and NMS.

The detection stage calls `letterbox` per frame and stacks the (3,S,S) blobs into one batch; the
post-processing stage calls `decode_retinaface` per image on the batched outputs. Every frame is padded to
the same square so frames of any size batch together; `scale` maps input pixels back to source pixels.

Model contract (biubug6 Pytorch_Retinaface, mobilenet0.25 or ResNet-50): input BGR float minus (104,117,123),
outputs loc (N,P,4), conf (N,P,2) already softmaxed, landmarks (N,P,10), P priors over strides 8/16/32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from app.inference.interface import Model

MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
STEPS: tuple[int, ...] = (8, 16, 32)
VARIANCES: tuple[float, float] = (0.1, 0.2)
# Images are enlarged at most until their long side is this many input pixels (never shrunk for it). The
# largest priors are 512 px: a tight 150x150 face photo letterboxed into a 960 input becomes a ~900 px face
# that the model boxes ~30 % too small, with landmarks to match (the same photo then embeds 0.2-0.6 away from
# itself at 640; on the hard tracking scenario, enrolled at DET_SIZE=960, 0.33 of the faces were named
# instead of 0.75). So a DET_SIZE above 640 buys resolution up to the frame's own, never more enlargement
# than at 640; at 640 and below nothing changes.
MAX_ENLARGED_SIDE = 640
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
PRE_NMS_TOP_K = 5000
POST_NMS_TOP_K = 750


@dataclass
class Detections:
    """Faces found in one image, best score first, in source-image pixels."""

    boxes: np.ndarray  # (N,4) float32 x1,y1,x2,y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N,5,2) float32: image-left eye, image-right eye, nose, left mouth, right mouth

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def select(self, index: np.ndarray | Sequence[int] | slice) -> Detections:
        """The detections at `index` (an index array, a boolean mask or a slice)."""
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    def areas(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def at_least(self, min_face: int) -> Detections:
        """The faces whose box's short side is at least `min_face` pixels (MIN_FACE); 0 keeps every face."""
        if min_face <= 0 or not len(self):
            return self
        sides = np.minimum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])
        return self.select(sides >= min_face)

    def largest(self) -> int | None:
        """Index of the largest box, or None when there are no faces."""
        return int(np.argmax(self.areas())) if len(self) else None


def detector_input_hw(model: Model, det_size: int) -> tuple[int, int]:
    """(H,W) to feed the detector: the model's own size when it was exported fixed, else det_size square."""
    fixed = model.inputs[0].fixed_hw
    return fixed if fixed is not None else (int(det_size), int(det_size))


def fitted_input_hw(frame_hw: Sequence[tuple[int, int]], det_size: int) -> tuple[int, int]:
    """The smallest (H,W) detector input that holds every one of these frames letterboxed at `det_size`
    (long side), in whole multiples of the coarsest feature stride.

    A square det_size input spends most of its compute on padding for a wide frame: 1280x720 at 640 needs
    640x384, which ran mobilenet0.25 in 7.7-8.0 ms a frame against 13.3-14.5 ms at 640x640 (ONNX Runtime,
    one thread, this 2-core box); on the demo clip the faces found were the same, box for box (the rows cut
    away were padding)."""
    stride = max(STEPS)
    if det_size % stride:
        return int(det_size), int(det_size)  # (the letterbox scale would then differ from the square's)
    height = width = stride
    for h, w in frame_hw:
        scale = min(det_size / max(h, w), enlargement_limit((h, w)))
        height = max(height, math.ceil(round(h * scale) / stride) * stride)
        width = max(width, math.ceil(round(w * scale) / stride) * stride)
    return min(height, det_size), min(width, det_size)


def enlargement_limit(src_hw: tuple[int, int]) -> float:
    """The largest letterbox scale for an image of (H,W): up to MAX_ENLARGED_SIDE on its long side, >= 1."""
    return max(1.0, MAX_ENLARGED_SIDE / max(src_hw[0], src_hw[1], 1))


def letterbox_scale(src_hw: tuple[int, int], input_hw: tuple[int, int]) -> float:
    """input pixel = source pixel * this: the image fits the input, enlarged at most `enlargement_limit`."""
    fit = min(input_hw[0] / src_hw[0], input_hw[1] / src_hw[1])
    return min(fit, enlargement_limit(src_hw))


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))


def letterbox(
    image: np.ndarray, size: int | tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Resize a BGR uint8 image so it fits `size` ((H,W) or square side), pad bottom/right, subtract the mean.

    A small image is enlarged only up to MAX_ENLARGED_SIDE on its long side (`letterbox_scale`).

    Returns (blob (3,H,W) float32, scale) where input pixel = source pixel * scale. Pass `out` (a (3,H,W)
    float32 view, e.g. a row of a batch buffer) to write in place. Padding is 0 after mean subtraction, i.e.
    the mean colour, which the model reads as background.
    """
    h, w = _as_hw(size)
    scale = letterbox_scale(image.shape[:2], (h, w))
    # fx/fy (not dsize) so OpenCV maps coordinates with exactly `scale` on both axes.
    resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    rh, rw = min(resized.shape[0], h), min(resized.shape[1], w)
    blob = np.empty((3, h, w), np.float32) if out is None else out
    blob[:, rh:, :] = 0.0
    blob[:, :rh, rw:] = 0.0
    np.subtract(resized[:rh, :rw].transpose(2, 0, 1), BGR_MEAN[:, None, None], out=blob[:, :rh, :rw])
    return blob, float(scale)


@dataclass(frozen=True)
class RetinaFacePreprocessor:
    """Letterboxes frames to one fixed detector input size so they can be batched."""

    input_hw: tuple[int, int]

    @classmethod
    def for_model(cls, model: Model, det_size: int) -> RetinaFacePreprocessor:
        return cls(detector_input_hw(model, det_size))

    def __call__(self, image_bgr: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        return letterbox(image_bgr, self.input_hw, out=out)


@lru_cache(maxsize=16)
def prior_boxes(input_hw: tuple[int, int]) -> np.ndarray:
    """biubug6 priors (P,4): normalised cx, cy, w, h in the model's output order (level, row, col, size)."""
    h, w = input_hw
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        cy, cx = np.meshgrid(
            (np.arange(fh) + 0.5) * step / h, (np.arange(fw) + 0.5) * step / w, indexing="ij"
        )
        level = np.empty((fh, fw, len(sizes), 4), np.float32)
        level[..., 0] = cx[:, :, None]
        level[..., 1] = cy[:, :, None]
        level[..., 2] = np.asarray(sizes, np.float32) / w
        level[..., 3] = np.asarray(sizes, np.float32) / h
        levels.append(level.reshape(-1, 4))
    priors = np.concatenate(levels)
    priors.setflags(write=False)
    return priors


@lru_cache(maxsize=16)
def _pixel_priors(input_hw: tuple[int, int]) -> np.ndarray:
    # Priors in input pixels with the variances folded in: decode is then two FMAs and an exp per candidate.
    h, w = input_hw
    p = prior_boxes(input_hw) * np.array([w, h, w, h], np.float32)
    folded = np.concatenate([p, p[:, 2:] * VARIANCES[0]], axis=1)  # cx, cy, w, h, 0.1*w, 0.1*h
    folded.setflags(write=False)
    return folded


# NMS compares this many open boxes (best first) with all open ones at a time (see `nms`).
NMS_BLOCK = 32


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    A box is dropped when its IoU with a better kept box exceeds `iou_threshold` (a NaN IoU drops it too).
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order]
    areas = np.maximum(ranked[:, 2] - ranked[:, 0], 0) * np.maximum(ranked[:, 3] - ranked[:, 1], 0)
    keep: list[int] = []
    open_ = np.arange(order.shape[0])  # positions in `ranked` not decided yet, best first
    # One box against the others at a time cost ~20 numpy calls per kept box (a frame: ~150 candidates
    # around ~10 faces). Instead the next NMS_BLOCK open boxes are compared with every open box at once,
    # and the greedy pass walks that block's rows: a kept row drops the boxes it overlaps. Each IoU is
    # computed by the same operations on the same values as one box against the rest (bit for bit).
    while open_.shape[0]:
        cols = ranked[open_]
        rows = cols[:NMS_BLOCK]
        inter = np.minimum(rows[:, 2:3], cols[:, 2])
        inter -= np.maximum(rows[:, 0:1], cols[:, 0])
        np.maximum(inter, 0, out=inter)
        height = np.minimum(rows[:, 3:4], cols[:, 3])
        height -= np.maximum(rows[:, 1:2], cols[:, 1])
        np.maximum(height, 0, out=height)
        inter *= height
        col_areas = areas[open_]
        union = col_areas[: rows.shape[0], None] + col_areas
        union -= inter
        np.maximum(union, 1e-12, out=union)
        inter /= union
        survives = inter <= iou_threshold
        alive = np.ones(open_.shape[0], bool)
        for r in range(rows.shape[0]):
            if alive[r]:  # not dropped by a better kept box (of this block or, by compaction, earlier)
                keep.append(int(open_[r]))
                alive &= survives[r]  # (row r itself too, and earlier rows: those are decided already)
        rest = alive[rows.shape[0] :]
        open_ = open_[rows.shape[0] :][rest]
    return order[keep]


def split_outputs(outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loc, conf, landmarks) from the model outputs, told apart by the last axis (4, 2, 10), not by name."""
    by_width = {o.shape[-1]: o for o in outputs}
    try:
        return by_width[4], by_width[2], by_width[10]
    except KeyError:
        shapes = [tuple(o.shape) for o in outputs]
        raise ValueError(f"not biubug6 RetinaFace outputs (need last axes 4, 2 and 10): {shapes}") from None


def decode_retinaface(
    loc: np.ndarray,
    conf: np.ndarray,
    landms: np.ndarray,
    scale: float,
    input_hw: tuple[int, int],
    score_threshold: float,
    nms_threshold: float,
    image_wh: tuple[int, int],
    prior_index: np.ndarray | None = None,
) -> Detections:
    """Decode one image's raw outputs ((P,4), (P,2), (P,10), or with a leading batch axis of 1) to Detections.

    With `prior_index` (K,) ascending, the outputs are only those K priors' rows (the detector's candidates)
    and decode to the same faces as the full outputs would, for any threshold the candidates cover.
    Only candidates above `score_threshold` are decoded, so the cost is the threshold pass plus work on tens
    of boxes. Boxes are clipped to `image_wh` (source pixels); landmarks are not, so cut-off faces still
    align.
    """
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    scores_all = conf.reshape(-1, 2)[:, 1]
    priors = _pixel_priors(input_hw)
    if prior_index is None and scores_all.shape[0] != priors.shape[0]:
        raise ValueError(
            f"model returned {scores_all.shape[0]} priors but input {input_hw} implies {priors.shape[0]}; "
            "pass the input size the blob actually had"
        )
    if prior_index is not None and (
        prior_index.shape[0] != scores_all.shape[0] or (prior_index.size and prior_index[-1] >= len(priors))
    ):
        raise ValueError(
            f"{scores_all.shape[0]} candidate rows for {prior_index.shape[0]} prior indices (input "
            f"{input_hw} has {priors.shape[0]} priors); pass the prior index the rows were taken with"
        )
    idx = np.flatnonzero(scores_all > score_threshold)
    if idx.size == 0:
        return Detections.empty()
    scores = scores_all[idx]
    if idx.size > PRE_NMS_TOP_K:
        top = np.argpartition(-scores, PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]
        idx, scores = idx[top], scores[top]
    p = priors[idx if prior_index is None else prior_index[idx]]
    d = loc.reshape(-1, 4)[idx]
    centers = p[:, :2] + d[:, :2] * p[:, 4:6]
    half = p[:, 2:4] * np.exp(d[:, 2:4] * VARIANCES[1]) * 0.5
    boxes = np.concatenate([centers - half, centers + half], axis=1)
    keep = nms(boxes, scores, nms_threshold)[:POST_NMS_TOP_K]
    boxes, scores, p = boxes[keep], scores[keep], p[keep]
    lm = landms.reshape(-1, 10)[idx[keep]].reshape(-1, 5, 2)
    landmarks = p[:, None, :2] + lm * p[:, None, 4:6]
    inv = np.float32(1.0 / scale)
    boxes *= inv
    landmarks *= inv
    w, h = image_wh
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
    return Detections(
        boxes.astype(np.float32, copy=False),
        scores.astype(np.float32, copy=False),
        landmarks.astype(np.float32, copy=False),
    )


@dataclass(frozen=True)
class RetinaFacePostprocessor:
    """Decodes a batch of raw detector outputs into one Detections per image."""

    input_hw: tuple[int, int]
    score_threshold: float = 0.6
    nms_threshold: float = 0.4

    def __call__(
        self, outputs: Sequence[np.ndarray], scales: Sequence[float], image_whs: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        loc, conf, landms = split_outputs(outputs)
        return [
            decode_retinaface(
                loc[i],
                conf[i],
                landms[i],
                scales[i],
                self.input_hw,
                self.score_threshold,
                self.nms_threshold,
                image_whs[i],
            )
            for i in range(len(scales))
        ]
