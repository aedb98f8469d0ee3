"""Variants of the shipped ONNX models for tests: the same weights, exported as if with a fixed batch."""

from __future__ import annotations

from pathlib import Path

import onnx


def fixed_batch_copy(model: Path, batch: int, folder: Path) -> Path:
    """`model` with its input's batch axis fixed to `batch` (as an exporter without dynamic axes writes it),
    saved in `folder`; every other axis stays as it was."""
    proto = onnx.load(str(model))
    axis = proto.graph.input[0].type.tensor_type.shape.dim[0]
    axis.ClearField("dim_param")
    axis.dim_value = batch
    path = folder / f"{model.stem}_batch{batch}.onnx"
    onnx.save(proto, str(path))
    return path
