from pathlib import Path

import cv2
import numpy as np
import pytest

from app.inference.spec import ARCFACE_TEMPLATE, DLIB_TEMPLATE, embedder_spec_for
from app.vision.alignment import align_faces, estimate_similarities, estimate_similarity

REPO = Path(__file__).resolve().parents[2]
DLIB = REPO / "checkpoints" / "dlib_resnet.onnx"


def similarity_matrix(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array(
        [[scale * np.cos(t), -scale * np.sin(t), tx], [scale * np.sin(t), scale * np.cos(t), ty]], np.float64
    )


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def umeyama_reference(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Textbook Umeyama (SVD, reflection-corrected), independent of the module's closed form."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    c = np.trace(np.diag(sig) @ e) / s.var(0).sum()
    return np.hstack([c * r, (mu_d - c * r @ mu_s)[:, None]])


@pytest.mark.parametrize(("scale", "degrees"), [(1.7, 30.0), (0.25, -75.0), (3.0, 180.0)])
def test_known_similarity_is_recovered_exactly(scale, degrees):
    # Landmarks = template pushed through the inverse of a known similarity; aligning must undo it.
    truth = similarity_matrix(scale, degrees, 40.0, -12.0)  # landmarks -> template
    inverse = cv2.invertAffineTransform(truth)
    landmarks = apply(inverse, DLIB_TEMPLATE.astype(np.float64))
    matrix = estimate_similarity(landmarks, DLIB_TEMPLATE)
    np.testing.assert_allclose(matrix, truth, atol=1e-9)
    np.testing.assert_allclose(apply(matrix, landmarks), DLIB_TEMPLATE, atol=1e-4)


def test_matches_textbook_umeyama_on_noisy_points():
    rng = np.random.default_rng(3)
    for _ in range(20):
        src = rng.normal(0, 50, (5, 2))
        dst = apply(
            similarity_matrix(rng.uniform(0.2, 3), rng.uniform(-180, 180), *rng.normal(0, 30, 2)), src
        )
        dst += rng.normal(0, 2, dst.shape)
        np.testing.assert_allclose(estimate_similarity(src, dst), umeyama_reference(src, dst), atol=1e-8)


def test_never_reflects():
    mirrored = DLIB_TEMPLATE * [-1, 1] + [150, 0]  # person seen in a mirror
    matrix = estimate_similarity(mirrored, DLIB_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_batch_equals_single():
    rng = np.random.default_rng(4)
    src = rng.normal(100, 30, (6, 5, 2))
    batch = estimate_similarities(src, ARCFACE_TEMPLATE)
    for i in range(6):
        np.testing.assert_allclose(batch[i], estimate_similarity(src[i], ARCFACE_TEMPLATE), atol=1e-12)


def _dots_image(landmarks: np.ndarray, shape=(900, 900), radius=6) -> np.ndarray:
    image = np.zeros((*shape, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(
            image, (round(x * 16), round(y * 16)), radius * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4
        )
    return image


def _blob_centres(chip: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(np.float64)
    count, labels = cv2.connectedComponents((gray > 20).astype(np.uint8))
    centres = []
    for k in range(1, count):
        ys, xs = np.nonzero(labels == k)
        w = gray[ys, xs]
        centres.append([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    return np.array(centres)


@pytest.mark.parametrize("face_scale", [1.3, 3.5])  # 3.5x: the INTER_AREA pre-shrink path
def test_align_faces_puts_landmarks_on_the_template(face_scale):
    spec = embedder_spec_for(DLIB)
    landmarks = apply(similarity_matrix(face_scale, 20.0, 300.0, 250.0), DLIB_TEMPLATE.astype(np.float64))
    image = _dots_image(landmarks, radius=round(3 * face_scale))
    chips = align_faces(image, landmarks[None], spec)
    assert chips.shape == (1, 150, 150, 3) and chips.dtype == np.uint8
    centres = _blob_centres(chips[0])
    assert len(centres) == 5
    # match each template point to its nearest blob centre
    dist = np.linalg.norm(DLIB_TEMPLATE[:, None] - centres[None], axis=-1)
    assert dist.min(axis=1).max() < 0.6


def test_channel_order_is_the_specs():
    spec = embedder_spec_for(DLIB)
    blue = np.zeros((300, 300, 3), np.uint8)
    blue[:, :, 0] = 255  # BGR blue
    landmarks = DLIB_TEMPLATE[None] + 50
    chip = align_faces(blue, landmarks, spec)[0]
    assert spec.channel_order == "RGB"
    assert chip[75, 75].tolist() == [0, 0, 255]


def test_no_faces_gives_an_empty_stack():
    spec = embedder_spec_for(DLIB)
    chips = align_faces(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 5, 2)), spec)
    assert chips.shape == (0, 150, 150, 3)


def test_face_outside_the_image_is_padded_black():
    spec = embedder_spec_for(DLIB)
    image = np.full((200, 200, 3), 255, np.uint8)
    # a large face hanging off the left edge: source = 2.5 * chip - (150, 0), so chip x < 60 is outside
    landmarks = DLIB_TEMPLATE[None] * 2.5 - [150, 0]
    chip = align_faces(image, landmarks, spec)[0]
    assert chip[:75, :58].max() == 0
    assert chip[3:75, 62:135].min() == 255  # (row 0 blends with the border above the image)


def test_a_photo_chip_past_the_edge_repeats_the_edge_pixels():
    spec = embedder_spec_for(DLIB)
    image = np.zeros((200, 200, 3), np.uint8)
    image[:, :100] = 40  # the photo's left half is dark, its right half bright
    image[:, 100:] = 220
    landmarks = DLIB_TEMPLATE[None] * 2.5 - [150, 0]  # hangs off the left edge, as above
    black = align_faces(image, landmarks, spec)[0]
    edge = align_faces(image, landmarks, spec, edge=True)[0]
    assert black[:75, :58].max() == 0 and (edge[:75, :58] == 40).all()  # the dark edge, not black
    np.testing.assert_array_equal(edge[3:75, 62:135], black[3:75, 62:135])  # inside the photo: the same


@pytest.mark.parametrize("edge", [False, True])
def test_chips_from_an_nv12_frame_are_those_of_its_whole_conversion(edge):
    """Faces of several sizes (a 3.5x one pre-shrunk, one hanging off the frame's corner) on a 1080p frame
    of the clip kept as NV12: each chip converts only its region, and comes out as from the whole frame."""
    from app.vision.pixel_format import NV12, FramePixels, bgr_to_nv12, nv12_to_bgr
    from tests.support.shared_data import HAMILTON

    cap = cv2.VideoCapture(str(HAMILTON))
    for _ in range(100):
        frame = cap.read()[1]
    cap.release()
    nv12 = bgr_to_nv12(cv2.resize(frame, (1920, 1080)))
    spec = embedder_spec_for(DLIB)
    template = DLIB_TEMPLATE.astype(np.float64)
    faces = [(1.0, 0.0, 400.0, 300.0), (1.3, 20.0, 901.0, 457.0), (3.5, -10.0, 1200.0, 500.0),
             (0.8, 5.0, 1850.0, 1030.0), (2.0, 30.0, -60.0, -40.0)]  # fmt: skip
    landmarks = np.stack([apply(similarity_matrix(s, d, x, y), template) for s, d, x, y in faces])
    whole = align_faces(nv12_to_bgr(nv12), landmarks, spec, edge=edge)
    pixels = FramePixels(nv12, NV12)
    regions = align_faces(pixels, landmarks, spec, edge=edge)
    assert pixels._bgr is None  # the frame itself was never converted
    gap = np.abs(regions.astype(np.int64) - whole)
    # The warp's fixed-point rounding of a shifted translation may move a pixel by a level, no more.
    assert gap.max() <= 1 and (gap > 0).mean() < 0.01
