"""Torch letterbox and batched face warp against the OpenCV path they replace (run here on the CPU)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="GPU preprocessing is part of the optional 'torch' extra")

from app.inference.spec import embedder_spec_for  # noqa: E402
from app.vision import gpu_preprocess  # noqa: E402
from app.vision.alignment import align_faces, estimate_similarities  # noqa: E402
from app.vision.image_io import read_image  # noqa: E402
from app.vision.retinaface import decode_retinaface, letterbox, split_outputs  # noqa: E402
from tests.support.shared_data import SHARED_FACES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"


@pytest.fixture(scope="module")
def scene():
    """Frames of different sizes (one of them 1080p: its face needs the pyramid) and their detections."""
    names = ("two_people.jpg", "obama-1080p.jpg", "alex-lacamoire.png")
    images = [read_image(SHARED_FACES / n) for n in names]
    session = ort.InferenceSession(str(DETECTOR), providers=["CPUExecutionProvider"])
    landmarks, owners = [], []
    for i, img in enumerate(images):
        blob, scale = letterbox(img, 640)
        loc, conf, lm = split_outputs(session.run(None, {"input": blob[None]}))
        det = decode_retinaface(loc[0], conf[0], lm[0], scale, (640, 640), 0.6, 0.4, img.shape[1::-1])
        landmarks.append(det.landmarks)
        owners += [i] * len(det)
    return images, np.concatenate(landmarks), np.asarray(owners)


def test_letterbox_batch_matches_opencv(scene):
    images, _, _ = scene
    frames = gpu_preprocess.upload_frames(images, "cpu")
    blob, scales = gpu_preprocess.letterbox_batch(frames, (480, 640))
    ref = [letterbox(img, (480, 640)) for img in images]
    assert blob.shape == (3, 3, 480, 640) and blob.dtype == torch.float32
    np.testing.assert_allclose(scales, [s for _, s in ref], rtol=1e-12)
    diff = np.abs(blob.numpy() - np.stack([b for b, _ in ref]))
    assert diff.max() <= 1.0  # OpenCV's fixed-point bilinear vs float, both rounded to uint8
    assert diff.mean() < 0.1
    # Padding is exactly zero (the mean colour) where OpenCV pads.
    for (b, _), got in zip(ref, blob.numpy(), strict=True):
        pad = np.all(b == 0, axis=0)
        assert pad.any() and np.all(got[:, pad] == 0)


def test_warp_faces_matches_align_faces_and_embeds_the_same(scene):
    images, landmarks, owners = scene
    spec = embedder_spec_for(EMBEDDER)
    mats = estimate_similarities(landmarks, spec.template)
    assert gpu_preprocess.pyramid_levels(torch.from_numpy(mats)).max() >= 1  # the 1080p face is pre-shrunk
    frames = gpu_preprocess.upload_frames(images, "cpu")
    chips = gpu_preprocess.warp_faces(
        frames, owners, mats, (150, 150), spec.channel_order, spec.mean, spec.std
    )
    ref_chips = np.concatenate(
        [
            align_faces(img, landmarks[owners == i], spec)
            for i, img in enumerate(images)
            if (owners == i).any()
        ]
    )
    ref = ((ref_chips.astype(np.float32) - spec.mean) / spec.std).transpose(0, 3, 1, 2)
    assert chips.shape == ref.shape == (len(owners), 3, 150, 150)
    assert np.abs(chips.numpy() - ref).mean() * spec.std[0] < 2.0  # mean |diff| under 2 grey levels
    session = ort.InferenceSession(str(EMBEDDER), providers=["CPUExecutionProvider"])
    e_ref = session.run(None, {"input": ref.copy()})[0]
    e_gpu = session.run(None, {"input": chips.numpy()})[0]
    cosine = (e_ref * e_gpu).sum(1) / np.linalg.norm(e_ref, axis=1) / np.linalg.norm(e_gpu, axis=1)
    assert cosine.min() >= 0.999
    assert np.linalg.norm(e_ref - e_gpu, axis=1).max() < 0.05  # vs the 0.54 match distance


def test_identity_transform_reproduces_the_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    identity = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])
    chip = gpu_preprocess.warp_faces(
        [torch.from_numpy(frame)], [0], identity, (40, 60), "BGR", (0, 0, 0), (1, 1, 1)
    )
    np.testing.assert_allclose(chip[0].numpy(), frame.transpose(2, 0, 1), atol=1e-3)
    rgb = gpu_preprocess.warp_faces(
        [torch.from_numpy(frame)], [0], identity, (40, 60), "RGB", (0, 0, 0), (2, 2, 2)
    )
    np.testing.assert_allclose(rgb[0].numpy(), frame[..., ::-1].transpose(2, 0, 1) / 2.0, atol=1e-3)


def test_translation_and_out_of_frame_is_black():
    frame = np.full((20, 20, 3), 200, np.uint8)
    shift = np.array([[[1.0, 0, 10.0], [0, 1.0, 0]]])  # frame x -> chip x + 10: chip columns < 10 are outside
    chip = gpu_preprocess.warp_faces(
        [torch.from_numpy(frame)], [0], shift, (20, 20), "BGR", (0, 0, 0), (1, 1, 1)
    )
    assert np.all(chip[0, :, :, :9].numpy() == 0)
    assert np.allclose(chip[0, :, :, 11:].numpy(), 200)


def test_nv12_letterbox_matches_converting_with_opencv_first():
    """Resizing the planes, then converting at the detector input's size, gives the blob of OpenCV's
    conversion followed by the BGR letterbox: on average within a grey level (rounding, the clamps; at sharp
    colour edges the bilinear chroma differs from OpenCV's 2x2 blocks by more, on ~1 % of the values)."""
    from app.vision.pixel_format import bgr_to_nv12, nv12_to_bgr

    photo = read_image(SHARED_FACES / "obama-1080p.jpg")
    h, w = (s - s % 2 for s in photo.shape[:2])
    nv12 = bgr_to_nv12(np.ascontiguousarray(photo[:h, :w]))
    for size in ((384, 640), 640):
        got, got_scales = gpu_preprocess.letterbox_nv12_batch([torch.from_numpy(nv12)] * 2, size)
        want, want_scales = gpu_preprocess.letterbox_batch([torch.from_numpy(nv12_to_bgr(nv12))] * 2, size)
        assert got.shape == want.shape and got_scales == want_scales
        diff = (got - want).abs()
        assert float(diff.mean()) < 0.5 and float((diff > 4).float().mean()) < 0.015
        assert torch.equal((got == 0).all(dim=1), (want == 0).all(dim=1))  # the same padding


def test_letterbox_of_a_batch_equals_each_frame_alone():
    """Frames of one size go through the kernels together: the blob is bit for bit that of letterboxing
    each frame alone, in a mixed-size sequence and from an (N, ...) tensor, NV12 and BGR."""
    from app.vision.pixel_format import bgr_to_nv12

    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (360, 480, 3), np.uint8)
    big = [rng.integers(0, 256, (720, 1280, 3), np.uint8) for _ in range(3)]
    for fn, convert in (
        (gpu_preprocess.letterbox_batch, lambda f: f),
        (gpu_preprocess.letterbox_nv12_batch, bgr_to_nv12),
    ):
        frames = [torch.from_numpy(convert(f)) for f in (big[0], big[1], small, big[2])]
        alone = [fn([f], (384, 640)) for f in frames]
        got, scales = fn(frames, (384, 640))
        assert torch.equal(got, torch.cat([blob for blob, _ in alone]))
        assert scales == [s[0] for _, s in alone]
        stacked, _ = fn(torch.stack(frames[:2]), (384, 640))
        assert torch.equal(stacked, got[:2])
