"""The inference interface every stage codes against: a `Model` and the `TensorInfo` of its inputs/outputs.

A `Model` takes an NCHW batch of any size and returns its outputs in the model's declared order. Stages never
import a runtime directly, so the same code runs on ONNX Runtime CPU, CUDA or TensorRT providers. The backends
implement this interface and `app.inference.backend.load_model` picks one; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from app.errors import UserError

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def tensor_dim(dim: object) -> int | str | None:
    """One axis as `TensorInfo` keeps it: a positive int when fixed, its name when symbolic, else None."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim if dim > 0 else None
    return dim if isinstance(dim, str) and dim else None


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output; `shape` has ints for fixed axes, a name (str) or None for dynamic ones."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """(height, width) when both spatial axes of an NCHW tensor are fixed, else None."""
        if len(self.shape) != 4:
            return None
        h, w = self.shape[2], self.shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the model was exported with a fixed one, else None."""
        b = self.shape[0] if self.shape else None
        return b if isinstance(b, int) and b > 0 else None


def require_model_file(path: Path) -> None:
    """UserError naming a model file that is not there (and how to fetch the shipped ones)."""
    if not path.is_file():
        hint = " (run `python -m app.models fetch`)" if path.parent.name == "checkpoints" else ""
        raise UserError(f"model file {path} does not exist; check the path{hint}")


def require_one_image_input(path: object, inputs: list[TensorInfo]) -> None:
    """A `Model` takes one NCHW batch; UserError naming the file and its inputs when it has anything else."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        got = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
        raise UserError(
            f"{path} must have one NCHW (rank-4) image input but has: {got}; "
            "export it with a single (N,3,H,W) input"
        )


@runtime_checkable
class Model(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run an NCHW batch of any number of rows (a fixed-batch model's too: the backend cuts and pads it,
        `batching.run_in_chunks`); outputs come back in the order of `outputs`."""
        ...
