import multiprocessing

import pytest

from app.pipeline.restart_state import SIZE, RestartState


def test_a_new_state_is_a_first_process_with_nothing_read():
    state = RestartState([0.0] * SIZE)
    assert (state.restarts, state.seq, state.frames_read, state.segment) == (0, 0, 0, 0)
    assert state.live_start is None


def test_fields_keep_their_own_slots():
    values = [0.0] * SIZE
    state = RestartState(values)
    state.restarts, state.seq, state.frames_read, state.segment = 2, 41, 57, 3
    state.live_start = 1234.5
    assert (state.restarts, state.seq, state.frames_read, state.segment) == (2, 41, 57, 3)
    assert state.live_start == 1234.5
    assert values[:5] == [2.0, 41.0, 57.0, 1234.5, 3.0]
    state.live_start = None
    assert state.live_start is None


def test_too_few_values_are_refused():
    with pytest.raises(ValueError, match="needs 8 values"):
        RestartState([0.0] * 3)


def _resume_and_advance(state: RestartState) -> None:
    state.seq = state.seq + 10
    state.frames_read = 99
    state.segment = state.segment + 1


def test_the_shared_state_outlives_a_spawned_process():
    ctx = multiprocessing.get_context("spawn")
    state = RestartState.shared(ctx)
    state.restarts, state.seq = 1, 5
    child = ctx.Process(target=_resume_and_advance, args=(state,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert (state.restarts, state.seq, state.frames_read, state.segment) == (1, 15, 99, 1)
