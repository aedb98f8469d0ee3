"""Model batches of a fixed or a capped size: cutting a batch into the model's chunks, padding the last one,
joining the outputs back. Every backend and stage that feeds a model more rows than it takes a call uses this.

A model exported with a fixed batch runs exactly that many rows a call: the rows go in chunks of that size,
the last one zero-padded, and the padding rows' outputs are dropped. A model with a dynamic batch runs any
number of rows up to its cap (a TensorRT profile's largest batch, the torch backend's largest CUDA-graph
bucket), or all of them in one call when it has none (ONNX Runtime). Rows are independent, so chunking never
changes a row's result.

The same code cuts numpy arrays (the host backends) and torch tensors (the torch backend's device path): the
two operations that differ between them, joining and making zero rows, come in as `ArrayOps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar, cast

import numpy as np


class Rows(Protocol):
    """A batch: rows along its first axis, sliceable (a numpy array, a torch tensor, a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Self: ...


A = TypeVar("A", bound=Rows)


@dataclass(frozen=True)
class ArrayOps(Generic[A]):
    """What chunking needs from an array library."""

    join: Callable[[list[A]], A]  # concatenate along the first axis
    zero_rows: Callable[[A, int], A]  # n rows of zeros shaped and typed like the given batch's rows


def _numpy_zero_rows(like: np.ndarray, rows: int) -> np.ndarray:
    return np.zeros((rows, *like.shape[1:]), like.dtype)


NUMPY_OPS: ArrayOps[np.ndarray] = ArrayOps(np.concatenate, _numpy_zero_rows)


def stage_batch(limit: int, fixed: int | None) -> int:
    """The most rows a stage hands its model a call: its own limit (at least 1), not above the model's fixed
    batch, so a stage's batch is one model run."""
    limit = max(1, int(limit))
    return limit if fixed is None else min(limit, fixed)


def chunk_slices(rows: int, step: int | None) -> list[slice]:
    """The row ranges `rows` rows run in: `step` each, the last one shorter; one range when `step` is None."""
    if step is None:
        return [slice(0, rows)]
    if step < 1:
        raise ValueError(f"a chunk holds at least 1 row, got {step}")
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def run_in_chunks(
    run: Callable[[A], list[A]],
    batch: A,
    *,
    fixed: int | None = None,
    limit: int | None = None,
    ops: ArrayOps[A] | None = None,
) -> list[A] | None:
    """`run`'s outputs for `batch`, run in the chunks the model takes (see the module doc).

    fixed: the model's fixed batch (chunks of exactly that many rows, the last one padded); else limit: the
    most rows a call (None: no cap). ops: None for numpy arrays. A batch the model takes as it is runs in one
    call, unchanged; an empty batch for a fixed-batch model gives None (nothing to run: the caller knows its
    output shapes).
    """
    array_ops = cast(ArrayOps[A], NUMPY_OPS) if ops is None else ops
    rows = len(batch)
    step = fixed or limit
    if step is None or (rows <= step and (fixed is None or rows == fixed)):
        return run(batch)
    parts: list[list[A]] = []
    for chunk in chunk_slices(rows, step):
        part = batch[chunk]
        real = len(part)
        if fixed is not None and real < fixed:
            part = array_ops.join([part, array_ops.zero_rows(part, fixed - real)])
        parts.append([out[:real] for out in run(part)] if real < len(part) else run(part))
    if not parts:
        return None
    return [array_ops.join([p[k] for p in parts]) for k in range(len(parts[0]))]
