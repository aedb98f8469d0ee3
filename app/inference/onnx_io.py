"""An ONNX file's real inputs and outputs as `TensorInfo`, read from the graph without building a session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from app.errors import UserError
from app.inference.interface import TensorInfo, tensor_dim


def value_info(value: onnx.ValueInfoProto) -> TensorInfo:
    """One graph input or output; a tensor without an element type reads as float32."""
    tensor = value.type.tensor_type
    dims = tuple(
        tensor_dim(d.dim_value if d.HasField("dim_value") else d.dim_param) for d in tensor.shape.dim
    )
    elem = tensor.elem_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name if elem else "float32"
    return TensorInfo(name=value.name, shape=dims, dtype=dtype)


def graph_io(graph: onnx.GraphProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs); initializers that older exporters also list as inputs are left out."""
    initializers = {i.name for i in graph.initializer}
    inputs = [value_info(i) for i in graph.input if i.name not in initializers]
    return inputs, [value_info(o) for o in graph.output]


def read_io(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """`graph_io` of the file at `path`; UserError when it is not a readable ONNX model."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise UserError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export or re-download it"
        ) from None
    return graph_io(graph)
