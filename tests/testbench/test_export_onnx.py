"""export_onnx: the model definitions reproduce the shipped RetinaFace, exports decode through the project's
post-processing, IResNet exports have a dynamic batch, checkpoints load by the original key names."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="export_onnx needs the optional 'torch' extra")

from onnx import numpy_helper  # noqa: E402

from app.errors import UserError  # noqa: E402
from app.inference.torch_convert import fold_identities  # noqa: E402
from app.vision.image_io import read_image  # noqa: E402
from app.vision.retinaface import decode_retinaface, letterbox, prior_boxes, split_outputs  # noqa: E402
from testbench import export_onnx  # noqa: E402
from tests.support.shared_data import SHARED_FACES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints" / "retinaface_mnet025.onnx"


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _load_shipped_weights(model: torch.nn.Module) -> None:
    """Put the shipped ONNX's weights into our mobilenet0.25 RetinaFace.

    The shipped file has BatchNorm folded into the convs, so each conv gets the folded weight and its BN
    becomes "add the folded bias" (mean 0, var 1 - eps, gamma 1). Convs are matched in execution order; the
    heads by name (the shipped file names them class_head/bbox_head/landmark_head).
    """
    proto = onnx.load(str(SHIPPED))
    fold_identities(proto)  # SSH's shared conv appears twice behind Identity aliases
    inits = {i.name: numpy_helper.to_array(i).copy() for i in proto.graph.initializer}
    seen: set[str] = set()
    body = []
    for node in proto.graph.node:
        if node.op_type == "Conv" and "_head" not in node.input[1] and node.input[1] not in seen:
            seen.add(node.input[1])
            body.append((inits[node.input[1]], inits[node.input[2]]))
    order: list[torch.nn.Conv2d] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.bias is None
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    bn_after = {
        seq[i]: seq[i + 1]
        for seq in model.modules()
        if isinstance(seq, torch.nn.Sequential)
        for i in range(len(seq) - 1)
        if isinstance(seq[i], torch.nn.Conv2d)
    }
    assert len(order) == len(body) == 47
    with torch.no_grad():
        for conv, (w, b) in zip(order, body, strict=True):
            conv.weight.copy_(torch.from_numpy(w))
            bn = bn_after[conv]
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.bias.copy_(torch.from_numpy(b))
        for key, heads in (("class_head", model.ClassHead), ("bbox_head", model.BboxHead)):
            for i in range(3):
                heads[i].conv1x1.weight.copy_(torch.from_numpy(inits[f"{key}.{key}.{i}.weight"]))
                heads[i].conv1x1.bias.copy_(torch.from_numpy(inits[f"{key}.{key}.{i}.bias"]))
        for i in range(3):
            head = model.LandmarkHead[i].conv1x1
            head.weight.copy_(torch.from_numpy(inits[f"landmark_head.landmark_head.{i}.weight"]))
            head.bias.copy_(torch.from_numpy(inits[f"landmark_head.landmark_head.{i}.bias"]))


@pytest.fixture(scope="module")
def real_mnet025() -> torch.nn.Module:
    model = export_onnx.build_model("retinaface_mnet025")
    _load_shipped_weights(model)
    return model.eval()


def test_mnet025_definition_reproduces_the_shipped_model(real_mnet025):
    """Same weights, same outputs: the architecture (leaky slopes, FPN, SSH, heads, softmax) is biubug6's."""
    x = np.random.default_rng(0).uniform(-120, 130, (1, 3, 480, 640)).astype(np.float32)
    ref = _session(SHIPPED).run(None, {"input": x})
    with torch.no_grad():
        got = real_mnet025(torch.from_numpy(x))
    for r, g in zip(ref, got, strict=True):
        assert r.shape == tuple(g.shape)
        assert np.abs(r - g.numpy()).max() < 1e-4


def test_exported_mnet025_detects_like_the_shipped_model(real_mnet025, tmp_path):
    path = export_onnx.export(real_mnet025, "retinaface_mnet025", tmp_path / "mnet.onnx", source="shipped")
    assert not export_onnx.is_random_weights(path)
    image = read_image(SHARED_FACES / "two_people.jpg")
    blob, scale = letterbox(image, 640)

    def detect(model_path: Path):
        loc, conf, lm = split_outputs(_session(model_path).run(None, {"input": blob[None]}))
        return decode_retinaface(loc[0], conf[0], lm[0], scale, (640, 640), 0.6, 0.4, image.shape[1::-1])

    ours, shipped = detect(path), detect(SHIPPED)
    assert len(ours) == len(shipped) == 2
    assert np.abs(ours.boxes - shipped.boxes).max() < 0.5
    assert np.abs(ours.landmarks - shipped.landmarks).max() < 0.5


def test_random_mnet025_export_decodes_through_the_project_postprocessing(tmp_path, capsys):
    path = tmp_path / "mnet_random.onnx"
    argv = ["retinaface_mnet025", "--random-weights", "-o", str(path), "--size", "320"]
    assert export_onnx.main(argv) == 0
    out = capsys.readouterr()
    assert "RANDOM weights" in out.err and "benchmarking only" in out.err
    assert "max relative difference" in out.out
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta[export_onnx.RANDOM_WEIGHTS_KEY].startswith("true")
    assert export_onnx.is_random_weights(path)
    session = _session(path)
    for hw in ((640, 640), (480, 320)):  # batch, height and width are all dynamic
        image = read_image(SHARED_FACES / "obama-720p.jpg")
        blob, scale = letterbox(image, hw)
        outputs = session.run(None, {"input": np.stack([blob, blob])})
        loc, conf, lm = split_outputs(outputs)
        assert loc.shape == (2, len(prior_boxes(hw)), 4)
        np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)  # softmaxed like biubug6's 'test' phase
        dets = decode_retinaface(loc[0], conf[0], lm[0], scale, hw, 0.5, 0.4, image.shape[1::-1])
        assert len(dets) > 0 and np.isfinite(dets.boxes).all() and dets.landmarks.shape == (len(dets), 5, 2)
        assert (dets.boxes[:, 0::2] <= image.shape[1]).all() and (dets.boxes[:, 1::2] <= image.shape[0]).all()


def _io(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path)).graph

    def describe(values):
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_value if d.dim_value else "dynamic" for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    return describe(graph.input), describe(graph.output)


def test_exported_mnet025_io_matches_the_shipped_file(tmp_path):
    model = export_onnx.build_model("retinaface_mnet025")
    export_onnx.randomise(model)
    path = export_onnx.export(model, "retinaface_mnet025", tmp_path / "mnet.onnx", random_weights=True)
    (ours_in, ours_out), (ref_in, ref_out) = _io(path), _io(SHIPPED)
    assert ours_in == ref_in == [("input", 1, ["dynamic", 3, "dynamic", "dynamic"])]
    assert (
        [(n, t) for n, t, _ in ours_out]
        == [(n, t) for n, t, _ in ref_out]
        == [
            ("loc", 1),
            ("conf", 1),
            ("landmarks", 1),
        ]
    )
    assert all(dims[0] == "dynamic" and len(dims) == 3 for _, _, dims in ours_out)
    x = np.random.default_rng(1).uniform(-100, 100, (3, 3, 256, 320)).astype(np.float32)
    ours = _session(path).run(None, {"input": x})
    ref = _session(SHIPPED).run(None, {"input": x})
    assert [o.shape for o in ours] == [r.shape for r in ref]


def test_iresnet18_export_has_512_d_output_and_dynamic_batch(tmp_path):
    model = export_onnx.build_model("iresnet18")
    export_onnx.randomise(model, seed=3)
    path = export_onnx.export(model, "iresnet18", tmp_path / "r18.onnx", random_weights=True)
    (inputs, outputs) = _io(path)
    assert inputs == [("input", 1, ["dynamic", 3, 112, 112])]
    assert outputs == [("embedding", 1, ["dynamic", 512])]
    session = _session(path)
    x = np.random.default_rng(2).uniform(-1, 1, (5, 3, 112, 112)).astype(np.float32)
    five = session.run(None, {"input": x})[0]
    one = session.run(None, {"input": x[:1]})[0]
    assert five.shape == (5, 512) and one.shape == (1, 512)
    np.testing.assert_allclose(one[0], five[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(ref - five).max() < 1e-3 * np.abs(ref).max()


def test_checkpoints_load_by_the_original_key_names(tmp_path):
    model = export_onnx.build_model("retinaface_mnet025")
    keys = set(model.state_dict())
    for key in (
        "body.stage1.0.0.weight",
        "body.stage3.1.3.weight",
        "fpn.merge2.0.weight",
        "ssh3.conv7x7_3.1.running_var",
        "ClassHead.2.conv1x1.bias",
        "LandmarkHead.0.conv1x1.weight",
    ):
        assert key in keys
    r50 = set(export_onnx.build_model("retinaface_r50").state_dict())
    assert {"body.conv1.weight", "body.layer1.0.downsample.0.weight", "body.layer4.2.bn3.running_mean"} <= r50
    r100 = set(export_onnx.build_model("iresnet100").state_dict())
    assert {
        "layer2.12.prelu.weight",
        "features.running_var",
        "fc.weight",
        "layer1.0.downsample.1.bias",
    } <= r100

    export_onnx.randomise(model, seed=5)
    # A DataParallel checkpoint ("module." prefix, as biubug6's training saves) loads after stripping it.
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(wrapped, tmp_path / "mnet.pth")
    fresh = export_onnx.build_model("retinaface_mnet025")
    export_onnx.load_checkpoint(fresh, tmp_path / "mnet.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pth")
    export_onnx.load_checkpoint(export_onnx.build_model("retinaface_mnet025"), tmp_path / "wrapped.pth")


def test_checkpoint_errors(tmp_path, capsys):
    model = export_onnx.build_model("iresnet18")
    torch.save(export_onnx.build_model("retinaface_mnet025").state_dict(), tmp_path / "det.pth")
    with pytest.raises(UserError, match="does not fit this architecture: .* missing keys"):
        export_onnx.load_checkpoint(model, tmp_path / "det.pth")
    torch.save(export_onnx.build_model("iresnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(UserError, match="does not fit this architecture"):
        export_onnx.load_checkpoint(model, tmp_path / "r34.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a loadable PyTorch checkpoint"):
        export_onnx.load_checkpoint(model, tmp_path / "junk.pth")
    argv = ["iresnet18", "--checkpoint", str(tmp_path / "none.pth"), "-o", str(tmp_path / "x.onnx")]
    assert export_onnx.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint")
