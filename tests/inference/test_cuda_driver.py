"""The driver calls without torch: on a machine without an NVIDIA driver they change nothing and say so."""

from __future__ import annotations

import pytest

from app.inference.cuda_driver import GPU_WAITS, cuda_devices, set_gpu_wait


def test_without_a_driver_there_is_no_gpu_and_the_wait_is_left_alone() -> None:
    # CI and this project's machines have no NVIDIA driver; the GPU path is measured by testbench/gpu.
    assert cuda_devices() == 0
    assert all(set_gpu_wait(mode) is False for mode in GPU_WAITS)


def test_an_unknown_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown GPU wait 'nap'; use one of block, spin"):
        set_gpu_wait("nap")
