"""Convert dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) to ONNX, no dlib.

The ONNX model takes the already-normalised image: input ``input`` float32 [N, 3, 150, 150], RGB channel
order, each pixel ``(x - [122.782, 117.001, 104.298]) / 256`` (dlib's ``input_rgb_image_sized`` means; the
embedder spec in ``app/inference`` applies them, the graph does not), and returns ``embedding`` float32
[N, 128] (raw, not L2-normalised; same person when the Euclidean distance is <= 0.6).

dlib serializes a network input-side first: for every layer a tag string (``con_4``, ``affine_``, ``relu_``,
``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_2``) followed by its parameters and settings; tag/skip
layers carry no string. The converter scans the file for those tags in order, reads each layer's tensors
and settings (kernel, stride and padding come from the file, not from assumptions), and rebuilds the
residual topology:

    conv 7x7/2 -> affine -> relu -> max_pool 3x3/2 -> residual blocks -> avg_pool over H,W -> fc (no bias)
    block: relu(add(conv-affine-relu-conv-affine, shortcut))

The shortcut is the block input, or ``avg_pool 2x2/2`` of it in a down-sampling block (then an ``avg_pool_2``
sits right before ``add_prev_``). dlib's add_prev adds tensors of different shapes by zero-filling the smaller
one (extra channels appended, extra rows/columns at the bottom/right); the graph reproduces that with Pad.
The weights total 5,614,592 parameters; conversion refuses any other count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.models.dlib_serialization import DlibFormatError, DlibReader

EXPECTED_PARAMETERS = 5_614_592
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
OPSET = 13
IR_VERSION = 8  # fixed, so the file does not change with the installed onnx version
PRODUCER_NAME = "face-pipeline dlib_converter"
PRODUCER_VERSION = "1"

_LAYER_TAGS = (
    "input_rgb_image_sized",
    "con_4",
    "affine_",
    "relu_",
    "max_pool_2",
    "avg_pool_2",
    "add_prev_",
    "fc_2",
)
# A tag is a serialized string: packed length (0x01, len) then the bytes.
_TAG_PATTERN = re.compile(b"|".join(re.escape(bytes([1, len(tag)]) + tag.encode()) for tag in _LAYER_TAGS))


@dataclass
class DlibLayer:
    """One parsed dlib layer: kind is its tag, tensors its parameters, settings its integers."""

    kind: str
    offset: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, int] = field(default_factory=dict)

    @property
    def parameter_count(self) -> int:
        return int(sum(t.size for t in self.tensors.values()))


@dataclass
class DlibNetwork:
    """The layers of a dlib face ResNet in input-to-output order plus the input layer's settings."""

    layers: list[DlibLayer]
    input_size: tuple[int, int]
    mean_rgb: tuple[float, float, float]

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameter_count for layer in self.layers)


def _read_window(reader: DlibReader) -> dict[str, int]:
    keys = ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
    return {key: reader.read_int() for key in keys}


def parse_dlib_network(data: bytes) -> DlibNetwork:
    """Parse the layers of a dlib ResNet metric network from the .dat bytes."""
    reader = DlibReader(data)
    layers: list[DlibLayer] = []
    input_size: tuple[int, int] | None = None
    mean_rgb: tuple[float, float, float] | None = None
    channels = 3
    while True:
        match = _TAG_PATTERN.search(data, reader.offset)
        if match is None:
            break
        reader.offset = match.start()
        kind = reader.read_string()
        layer = DlibLayer(kind=kind, offset=match.start())
        if kind == "input_rgb_image_sized":
            mean_rgb = (reader.read_float(), reader.read_float(), reader.read_float())
            input_size = (reader.read_int(), reader.read_int())
            continue
        if kind == "con_4":
            params = reader.read_tensor().ravel()
            layer.settings = {"filters": reader.read_int(), **_read_window(reader)}
            filters, nr, nc = layer.settings["filters"], layer.settings["nr"], layer.settings["nc"]
            weight_count = filters * channels * nr * nc
            if params.size != weight_count + filters:
                raise DlibFormatError(
                    f"conv at offset {layer.offset} has {params.size} values, expected "
                    f"{weight_count + filters} for {filters}x{channels}x{nr}x{nc} + bias: not the dlib ResNet"
                )
            layer.tensors = {
                "weight": params[:weight_count].reshape(filters, channels, nr, nc),
                "bias": params[weight_count:],
            }
            channels = filters
        elif kind == "affine_":
            params = reader.read_tensor().ravel()
            if params.size != 2 * channels:
                raise DlibFormatError(
                    f"affine at offset {layer.offset} has {params.size} values, expected {2 * channels}"
                )
            layer.tensors = {"scale": params[:channels], "shift": params[channels:]}
        elif kind in ("max_pool_2", "avg_pool_2"):
            layer.settings = _read_window(reader)
        elif kind == "fc_2":
            outputs, inputs = reader.read_int(), reader.read_int()
            params = reader.read_tensor().ravel()
            if inputs != channels:
                raise DlibFormatError(f"fc expects {inputs} inputs but the network gives {channels} channels")
            if params.size == inputs * outputs:  # fc_no_bias
                layer.tensors = {"weight": params.reshape(inputs, outputs)}
            elif params.size == (inputs + 1) * outputs:  # bias stored as the last row
                matrix = params.reshape(inputs + 1, outputs)
                layer.tensors = {"weight": matrix[:inputs], "bias": matrix[inputs]}
            else:
                raise DlibFormatError(
                    f"fc has {params.size} values, which fits neither {inputs}x{outputs} form"
                )
            layer.settings = {"inputs": inputs, "outputs": outputs}
            channels = outputs
        layers.append(layer)
    if input_size is None or mean_rgb is None:
        raise DlibFormatError("no input_rgb_image_sized layer found: not a dlib face recognition model")
    if not layers or layers[-1].kind != "fc_2":
        raise DlibFormatError("dlib model does not end in an fc layer: not the face recognition ResNet")
    network = DlibNetwork(layers=layers, input_size=input_size, mean_rgb=mean_rgb)
    if network.parameter_count != EXPECTED_PARAMETERS:
        raise DlibFormatError(
            f"dlib model has {network.parameter_count} parameters, expected {EXPECTED_PARAMETERS}: "
            "wrong or corrupt dlib_face_recognition_resnet_model_v1.dat"
        )
    return network


def _pooled_size(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


class _GraphBuilder:
    """Accumulates nodes and initializers with stable names and a fixed order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def constant(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: object) -> str:
        output = self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


@dataclass
class _Value:
    """A tensor in the graph being built, with its static (channels, height, width)."""

    name: str
    shape: tuple[int, int, int]


def _zero_pad_to(builder: _GraphBuilder, value: _Value, target: tuple[int, int, int]) -> _Value:
    """Zero-fill channels at the end and rows/columns at the bottom/right, as dlib's add_prev does."""
    extra = [t - s for t, s in zip(target, value.shape, strict=True)]
    if not any(extra):
        return value
    pads = np.array([0, 0, 0, 0, 0, *extra], dtype=np.int64)
    name = builder.node("Pad", [value.name, builder.constant("pads", pads)], "pad", mode="constant")
    return _Value(name, target)


def build_onnx(network: DlibNetwork) -> onnx.ModelProto:
    """Rebuild the dlib ResNet as an ONNX graph (see the module docstring for its input and output)."""
    b = _GraphBuilder()
    height, width = network.input_size
    current = _Value(INPUT_NAME, (3, height, width))
    block_input = current
    shortcut: _Value | None = None
    after_add = False
    layers = network.layers
    for index, layer in enumerate(layers):
        kind = layer.kind
        if kind == "con_4":
            s = layer.settings
            out_shape = (
                s["filters"],
                _pooled_size(current.shape[1], s["nr"], s["stride_y"], s["pad_y"]),
                _pooled_size(current.shape[2], s["nc"], s["stride_x"], s["pad_x"]),
            )
            weight = b.constant("conv_weight", layer.tensors["weight"])
            bias = b.constant("conv_bias", layer.tensors["bias"])
            name = b.node(
                "Conv",
                [current.name, weight, bias],
                "conv",
                kernel_shape=[s["nr"], s["nc"]],
                strides=[s["stride_y"], s["stride_x"]],
                pads=[s["pad_y"], s["pad_x"], s["pad_y"], s["pad_x"]],
            )
            current = _Value(name, out_shape)
        elif kind == "affine_":
            channels = current.shape[0]
            scale = b.constant("affine_scale", layer.tensors["scale"].reshape(1, channels, 1, 1))
            shift = b.constant("affine_shift", layer.tensors["shift"].reshape(1, channels, 1, 1))
            scaled = b.node("Mul", [current.name, scale], "affine_mul")
            current = _Value(b.node("Add", [scaled, shift], "affine_add"), current.shape)
        elif kind == "relu_":
            current = _Value(b.node("Relu", [current.name], "relu"), current.shape)
            if after_add:  # the output of a residual block is the next block's input
                block_input = current
                after_add = False
        elif kind == "max_pool_2":
            current = _pool(b, "MaxPool", current, layer.settings)
            block_input = current
        elif kind == "avg_pool_2":
            next_kind = layers[index + 1].kind if index + 1 < len(layers) else ""
            if next_kind == "add_prev_":  # a down-sampling block's shortcut pools the block input
                shortcut = _pool(b, "AveragePool", block_input, layer.settings)
            elif layer.settings["nr"] == 0 and layer.settings["nc"] == 0:  # avg_pool_everything
                name = b.node("ReduceMean", [current.name], "global_mean", axes=[2, 3], keepdims=0)
                current = _Value(name, (current.shape[0], 1, 1))
            else:
                raise DlibFormatError(f"unexpected avg_pool_2 layer at offset {layer.offset}")
        elif kind == "add_prev_":
            other = shortcut if shortcut is not None else block_input
            target = tuple(max(a, c) for a, c in zip(current.shape, other.shape, strict=True))
            left = _zero_pad_to(b, current, target)
            right = _zero_pad_to(b, other, target)
            current = _Value(b.node("Add", [left.name, right.name], "residual_add"), target)
            shortcut = None
            after_add = True
        elif kind == "fc_2":
            weight = b.constant("fc_weight", layer.tensors["weight"])
            name = b.node("MatMul", [current.name, weight], "fc")
            if "bias" in layer.tensors:
                name = b.node("Add", [name, b.constant("fc_bias", layer.tensors["bias"])], "fc_bias_add")
            current = _Value(name, (layer.settings["outputs"], 1, 1))
    # The last node writes the graph output under its public name.
    b.nodes[-1].output[0] = OUTPUT_NAME
    graph = helper.make_graph(
        b.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", current.shape[0]])],
        initializer=b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        ir_version=IR_VERSION,
        doc_string=(
            "dlib face recognition ResNet v1 (Davis King, CC0). input: RGB NCHW float32 "
            f"(x - {list(network.mean_rgb)}) / 256; output: 128-d embedding, Euclidean, same person <= 0.6"
        ),
    )
    return model


def _pool(b: _GraphBuilder, op: str, value: _Value, s: dict[str, int]) -> _Value:
    shape = (
        value.shape[0],
        _pooled_size(value.shape[1], s["nr"], s["stride_y"], s["pad_y"]),
        _pooled_size(value.shape[2], s["nc"], s["stride_x"], s["pad_x"]),
    )
    name = b.node(
        op,
        [value.name],
        op.lower(),
        kernel_shape=[s["nr"], s["nc"]],
        strides=[s["stride_y"], s["stride_x"]],
        pads=[s["pad_y"], s["pad_x"], s["pad_y"], s["pad_x"]],
    )
    return _Value(name, shape)


def convert_dlib_to_onnx(data: bytes) -> bytes:
    """Convert .dat bytes to checked, byte-deterministic serialized ONNX."""
    model = build_onnx(parse_dlib_network(data))
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def convert_dlib_file(source: Path, destination: Path) -> None:
    """Convert a .dat file on disk and write the ONNX file atomically."""
    payload = convert_dlib_to_onnx(source.read_bytes())
    partial = destination.with_name(destination.name + ".partial")
    partial.write_bytes(payload)
    partial.replace(destination)
