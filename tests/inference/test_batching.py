"""Cutting a batch into a model's chunks: fixed batches full and padded, capped ones at most the cap, the
outputs joined back in row order; a batch the model takes as it is runs once, untouched."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.batching import chunk_slices, run_in_chunks, stage_batch


class RecordingModel:
    """Two outputs per row (its sum and its first value), and the batches it was called with."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.calls.append(batch)
        return [batch.sum(axis=1), batch[:, 0].copy()]


def rows(n: int) -> np.ndarray:
    return np.arange(1, 3 * n + 1, dtype=np.float32).reshape(n, 3)


def test_a_fixed_batch_model_gets_full_chunks_and_the_last_is_zero_padded():
    model, batch = RecordingModel(), rows(5)
    total, first = run_in_chunks(model.run, batch, fixed=2)
    assert [len(c) for c in model.calls] == [2, 2, 2]
    assert (model.calls[-1][1] == 0).all()  # the padding row
    np.testing.assert_array_equal(total, batch.sum(axis=1))
    np.testing.assert_array_equal(first, batch[:, 0])


def test_a_capped_model_gets_chunks_of_at_most_its_cap_unpadded():
    model, batch = RecordingModel(), rows(7)
    total, _ = run_in_chunks(model.run, batch, limit=3)
    assert [len(c) for c in model.calls] == [3, 3, 1]
    np.testing.assert_array_equal(total, batch.sum(axis=1))


def test_a_fixed_batch_wins_over_a_cap():
    model = RecordingModel()
    run_in_chunks(model.run, rows(3), fixed=2, limit=8)
    assert [len(c) for c in model.calls] == [2, 2]


@pytest.mark.parametrize(("n", "fixed", "limit"), [(4, None, None), (4, None, 4), (2, 2, None), (0, None, 3)])
def test_a_batch_the_model_takes_runs_once_as_it_is(n, fixed, limit):
    model, batch = RecordingModel(), rows(n)
    out = run_in_chunks(model.run, batch, fixed=fixed, limit=limit)
    assert len(model.calls) == 1 and model.calls[0] is batch
    assert out is not None and len(out[0]) == n


def test_an_empty_batch_for_a_fixed_batch_model_runs_nothing():
    model = RecordingModel()
    assert run_in_chunks(model.run, rows(0), fixed=4) is None
    assert model.calls == []


def test_chunk_slices_cover_every_row_once_in_order():
    assert chunk_slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert chunk_slices(6, 3) == [slice(0, 3), slice(3, 6)]
    assert chunk_slices(5, None) == [slice(0, 5)]
    assert chunk_slices(0, 3) == []
    with pytest.raises(ValueError, match="at least 1 row"):
        chunk_slices(4, 0)


def test_a_stage_batch_is_its_limit_within_the_model_fixed_batch():
    assert stage_batch(16, None) == 16
    assert stage_batch(16, 4) == 4
    assert stage_batch(2, 4) == 2
    assert stage_batch(0, None) == 1
