"""The driver calls without torch: on a machine without an NVIDIA driver they change nothing and say so."""

from __future__ import annotations

import pytest

from app.inference.cuda_driver import (
    GPU_WAITS,
    NoCudaDriver,
    PrimaryContext,
    cuda_devices,
    retain_primary_context,
    set_gpu_wait,
)


def test_without_a_driver_there_is_no_gpu_and_the_wait_is_left_alone() -> None:
    # CI and this project's machines have no NVIDIA driver; the GPU path is measured by testbench/gpu.
    assert cuda_devices() == 0
    assert all(set_gpu_wait(mode) is False for mode in GPU_WAITS)


def test_an_unknown_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown GPU wait 'nap'; use one of block, spin"):
        set_gpu_wait("nap")


def test_without_a_driver_the_primary_context_is_one_clear_error() -> None:
    with pytest.raises(
        NoCudaDriver, match=r"^libcuda \(the NVIDIA driver\) does not load or does not initialise"
    ):
        retain_primary_context(0, "block")


def test_an_unknown_wait_for_the_primary_context_is_refused_before_the_driver() -> None:
    with pytest.raises(ValueError, match="unknown GPU wait 'nap'"):
        retain_primary_context(0, "nap")


def test_a_primary_context_is_released_once() -> None:
    calls: list[int] = []
    context = PrimaryContext(device=0, handle=1, wait="block", _release=lambda: calls.append(0))
    context.release()
    context.release()
    assert calls == [0]
