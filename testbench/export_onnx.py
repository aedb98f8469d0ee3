"""Export biubug6 RetinaFace and insightface IResNet checkpoints to ONNX with a dynamic batch axis.

    python -m testbench.export_onnx retinaface_mnet025 --checkpoint mobilenet0.25_Final.pth -o det.onnx
    python -m testbench.export_onnx retinaface_r50 --checkpoint Resnet50_Final.pth -o det_r50.onnx
    python -m testbench.export_onnx iresnet100 --checkpoint backbone.pth -o r100.onnx
    python -m testbench.export_onnx iresnet100 --random-weights -o r100_bench.onnx   # benchmarking only

The model code mirrors the two repositories closely enough that their public `.pth` state dicts load
strictly (a 'module.' prefix from DataParallel training is stripped). RetinaFace is exported like biubug6's
`convert_to_onnx.py` in 'test' phase: input 'input' (N,3,H,W) BGR minus (104,117,123), outputs loc (N,P,4),
conf (N,P,2) softmaxed, landmarks (N,P,10), with batch, height and width dynamic. IResNet: input 'input'
(N,3,112,112) RGB (x/127.5 - 1), output 'embedding' (N,512), batch dynamic.

`--random-weights` writes a model whose outputs are meaningless; it exists for throughput measurements. It
prints a warning and stores a `.random-weights` entry in the ONNX metadata_props (see `is_random_weights`).
Needs the optional 'torch' extra.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx

from app.cli_exit import run_cli
from app.errors import UserError

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as _exc:  # the module stays importable so the CLI can say what is missing
    torch = None  # type: ignore[assignment]
    _TORCH_ERROR: ImportError | None = _exc
    nn = None  # type: ignore[assignment]
else:
    _TORCH_ERROR = None

RANDOM_WEIGHTS_KEY = ".random-weights"
RANDOM_WEIGHTS_NOTE = "true: random weights, for benchmarking only; outputs are meaningless"
RETINAFACE_ARCHS = ("retinaface_mnet025", "retinaface_r50")
IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
ARCHS = RETINAFACE_ARCHS + tuple(IRESNET_LAYERS)
RETINAFACE_OUTPUTS = ("loc", "conf", "landmarks")


def _require_torch() -> None:
    if torch is None:
        raise UserError(f"export_onnx needs torch ({_TORCH_ERROR}); install the 'torch' extra")


if nn is not None:
    # ---------------------------------------------------------------------------------------------------
    # biubug6 Pytorch_Retinaface (models/net.py, models/retinaface.py); attribute names = state-dict keys.
    # ---------------------------------------------------------------------------------------------------
    def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
            nn.BatchNorm2d(oup),
            nn.LeakyReLU(negative_slope=leaky, inplace=True),
        )

    def _conv_bn_no_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))

    def _conv_bn1x1(inp: int, oup: int, stride: int, leaky: float = 0.0) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
            nn.BatchNorm2d(oup),
            nn.LeakyReLU(negative_slope=leaky, inplace=True),
        )

    def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
            nn.BatchNorm2d(inp),
            nn.LeakyReLU(negative_slope=leaky, inplace=True),
            nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
            nn.LeakyReLU(negative_slope=leaky, inplace=True),
        )

    class MobileNetV1Body(nn.Module):
        """MobileNetV1 x0.25 up to stage3 (biubug6's IntermediateLayerGetter drops avg and fc)."""

        def __init__(self) -> None:
            super().__init__()
            self.stage1 = nn.Sequential(
                _conv_bn(3, 8, 2, leaky=0.1),
                _conv_dw(8, 16, 1),
                _conv_dw(16, 32, 2),
                _conv_dw(32, 32, 1),
                _conv_dw(32, 64, 2),
                _conv_dw(64, 64, 1),
            )
            self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
            self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            c3 = self.stage1(x)
            c4 = self.stage2(c3)
            return [c3, c4, self.stage3(c4)]

    class Bottleneck(nn.Module):
        """torchvision's ResNet-50 bottleneck (stride on the 3x3 conv), same attribute names."""

        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet50Body(nn.Module):
        """torchvision resnet50 up to layer4 (no avgpool/fc), returning layer2..layer4 like biubug6."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self._inplanes = 64
            self.layer1 = self._make_layer(64, 3, 1)
            self.layer2 = self._make_layer(128, 4, 2)
            self.layer3 = self._make_layer(256, 6, 2)
            self.layer4 = self._make_layer(512, 3, 2)

        def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
            downsample = None
            if stride != 1 or self._inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(self._inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            layers = [Bottleneck(self._inplanes, planes, stride, downsample)]
            self._inplanes = planes * 4
            layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            c2 = self.layer2(self.layer1(x))
            c3 = self.layer3(c2)
            return [c2, c3, self.layer4(c3)]

    class SSH(nn.Module):
        def __init__(self, in_channel: int, out_channel: int) -> None:
            super().__init__()
            leaky = 0.1 if out_channel <= 64 else 0.0
            self.conv3X3 = _conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
            self.conv5X5_1 = _conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
            self.conv5X5_2 = _conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
            self.conv7X7_2 = _conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
            self.conv7x7_3 = _conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            conv3x3 = self.conv3X3(x)
            conv5x5_1 = self.conv5X5_1(x)
            conv5x5 = self.conv5X5_2(conv5x5_1)
            conv7x7 = self.conv7x7_3(self.conv7X7_2(conv5x5_1))
            return F.relu(torch.cat([conv3x3, conv5x5, conv7x7], dim=1))

    class FPN(nn.Module):
        def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
            super().__init__()
            leaky = 0.1 if out_channels <= 64 else 0.0
            self.output1 = _conv_bn1x1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
            self.output2 = _conv_bn1x1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
            self.output3 = _conv_bn1x1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
            self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
            self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

        def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
            output1 = self.output1(inputs[0])
            output2 = self.output2(inputs[1])
            output3 = self.output3(inputs[2])
            up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
            output2 = self.merge2(output2 + up3)
            up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
            output1 = self.merge1(output1 + up2)
            return [output1, output2, output3]

    class _Head(nn.Module):
        def __init__(self, inchannels: int, num_anchors: int, width: int) -> None:
            super().__init__()
            self.width = width
            self.conv1x1 = nn.Conv2d(inchannels, num_anchors * width, kernel_size=(1, 1), stride=1, padding=0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
            return out.view(out.shape[0], -1, self.width)

    class RetinaFace(nn.Module):
        """biubug6 RetinaFace in 'test' phase: (loc, softmax(conf), landmarks)."""

        def __init__(self, backbone: str) -> None:
            super().__init__()
            if backbone == "mobilenet0.25":
                self.body: nn.Module = MobileNetV1Body()
                in_channel, out_channel = 32, 64
            elif backbone == "resnet50":
                self.body = ResNet50Body()
                in_channel, out_channel = 256, 256
            else:
                raise ValueError(f"unknown RetinaFace backbone {backbone!r}")
            self.fpn = FPN([in_channel * 2, in_channel * 4, in_channel * 8], out_channel)
            self.ssh1 = SSH(out_channel, out_channel)
            self.ssh2 = SSH(out_channel, out_channel)
            self.ssh3 = SSH(out_channel, out_channel)
            self.ClassHead = nn.ModuleList([_Head(out_channel, 2, 2) for _ in range(3)])
            self.BboxHead = nn.ModuleList([_Head(out_channel, 2, 4) for _ in range(3)])
            self.LandmarkHead = nn.ModuleList([_Head(out_channel, 2, 10) for _ in range(3)])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            fpn = self.fpn(self.body(x))
            features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
            loc = torch.cat([self.BboxHead[i](f) for i, f in enumerate(features)], dim=1)
            conf = torch.cat([self.ClassHead[i](f) for i, f in enumerate(features)], dim=1)
            landmarks = torch.cat([self.LandmarkHead[i](f) for i, f in enumerate(features)], dim=1)
            return loc, F.softmax(conf, dim=-1), landmarks

    # ---------------------------------------------------------------------------------------------------
    # insightface recognition/arcface_torch/backbones/iresnet.py
    # ---------------------------------------------------------------------------------------------------
    class IBasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
            self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
            self.prelu = nn.PReLU(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            identity = x if self.downsample is None else self.downsample(x)
            return out + identity

    class IResNet(nn.Module):
        fc_scale = 7 * 7

        def __init__(self, layers: tuple[int, int, int, int], num_features: int = 512) -> None:
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
            self.prelu = nn.PReLU(64)
            self.layer1 = self._make_layer(64, layers[0], 2)
            self.layer2 = self._make_layer(128, layers[1], 2)
            self.layer3 = self._make_layer(256, layers[2], 2)
            self.layer4 = self._make_layer(512, layers[3], 2)
            self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
            self.dropout = nn.Dropout(p=0.0, inplace=True)
            self.fc = nn.Linear(512 * self.fc_scale, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-05)

        def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
                )
            layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.bn2(x), 1)
            return self.features(self.fc(self.dropout(x)))


def build_model(arch: str) -> nn.Module:
    """An untrained model of `arch` (one of ARCHS)."""
    _require_torch()
    if arch == "retinaface_mnet025":
        return RetinaFace("mobilenet0.25")
    if arch == "retinaface_r50":
        return RetinaFace("resnet50")
    if arch in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[arch])
    raise UserError(f"unknown architecture {arch!r}; use one of: {', '.join(ARCHS)}")


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Weights with sane scale (so fp16 neither overflows nor underflows) and non-trivial BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1.0 + 0.1 * torch.rand(m.running_var.shape, generator=gen))


def strip_module_prefix(state_dict: dict[str, object]) -> dict[str, object]:
    """Drop DataParallel's 'module.' prefix from every key that has it."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a public `.pth` (a state dict or {'state_dict': ...}) strictly; UserError names key mismatches."""
    _require_torch()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:160]
        raise UserError(f"{path} is not a loadable PyTorch checkpoint ({msg})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
    state = strip_module_prefix(state)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit this architecture: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); pick the matching --arch"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, other shapes
        msg = " ".join(str(exc).split())[:200]
        raise UserError(f"{path} does not fit this architecture ({msg}); pick the matching --arch") from None


def export(
    model: nn.Module,
    arch: str,
    output: Path,
    size: int = 640,
    opset: int = 11,
    random_weights: bool = False,
    source: str = "",
) -> Path:
    """Export `model` (eval mode) to `output` with a dynamic batch axis; returns the path."""
    _require_torch()
    model = model.eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if arch in RETINAFACE_ARCHS:
        dummy = torch.randn(1, 3, size, size) * 50.0
        input_axes = {0: "batch_size", 2: "height", 3: "width"}
        output_names = list(RETINAFACE_OUTPUTS)
        dynamic_axes = {"input": input_axes, **{n: {0: "batch_size", 1: "priors"} for n in output_names}}
    else:
        dummy = torch.rand(1, 3, 112, 112) * 2.0 - 1.0
        output_names = ["embedding"]
        dynamic_axes = {"input": {0: "batch_size"}, "embedding": {0: "batch_size"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            (dummy,),
            str(output),
            input_names=["input"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: plain opset-11 graphs like the original exporters
        )
    proto = onnx.load(str(output))
    meta = {"arch": arch, "exported_by": "testbench.export_onnx", "source": source}
    if random_weights:
        meta[RANDOM_WEIGHTS_KEY] = RANDOM_WEIGHTS_NOTE
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(output))
    return output


def is_random_weights(path: Path) -> bool:
    """True when `path` was exported with --random-weights (benchmark-only model)."""
    proto = onnx.load(str(path), load_external_data=False)
    return any(p.key == RANDOM_WEIGHTS_KEY for p in proto.metadata_props)


def check_against_onnxruntime(model: nn.Module, path: Path, arch: str, size: int) -> float:
    """Largest |torch - ORT| / max|torch| over the outputs for one random batch of 2."""
    import onnxruntime as ort

    shape = (2, 3, size, size) if arch in RETINAFACE_ARCHS else (2, 3, 112, 112)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    if arch in RETINAFACE_ARCHS:
        x *= 120.0
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x))
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple | list) else [ref])]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})
    return max(
        float(np.abs(r - g).max() / max(np.abs(r).max(), 1e-12)) for r, g in zip(ref, got, strict=True)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m testbench.export_onnx", description=__doc__.split("\n")[0]
    )
    parser.add_argument("arch", choices=ARCHS)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="the public .pth state dict")
    weights.add_argument(
        "--random-weights", action="store_true", help="random weights: for throughput benchmarks ONLY"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--size", type=int, default=640, help="RetinaFace dummy input side (H,W stay dynamic)"
    )
    parser.add_argument("--opset", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    parser.add_argument("--no-check", action="store_true", help="skip the torch vs ONNX Runtime comparison")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    model = build_model(args.arch)
    if args.random_weights:
        print(
            f"warning: exporting {args.arch} with RANDOM weights: for benchmarking only, its outputs are "
            f"meaningless (marked '{RANDOM_WEIGHTS_KEY}' in the ONNX metadata)",
            file=sys.stderr,
        )
        randomise(model, args.seed)
        source = f"random seed {args.seed}"
    else:
        load_checkpoint(model, args.checkpoint)
        source = f"{args.checkpoint.name} sha256 {_sha256(args.checkpoint)}"
    path = export(model, args.arch, args.output, args.size, args.opset, args.random_weights, source)
    print(f"wrote {path}")
    if not args.no_check:
        diff = check_against_onnxruntime(model, path, args.arch, args.size)
        print(f"torch vs ONNX Runtime max relative difference: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
