"""The NVIDIA driver calls made without torch (libcuda through ctypes): how many GPUs there are, and how a
process's threads wait for its GPU.

Why the wait matters: CUDA's default (CU_CTX_SCHED_AUTO) spins a waiting thread while the process has fewer
contexts than the host has cores, so every detector and embedder process burns a core for as long as its GPU
works; on a host decoding 16 cameras those cores are the limit. "block" makes the thread sleep until the GPU
is done (the driver wakes it), "spin" busy-waits (a few microseconds sooner).
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

GPU_WAITS = ("block", "spin")
_SCHED_FLAGS = {"spin": 0x01, "block": 0x04}  # CU_CTX_SCHED_SPIN, CU_CTX_SCHED_BLOCKING_SYNC


def _driver() -> ctypes.CDLL | None:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return cuda if cuda.cuInit(0) == 0 else None


def cuda_devices() -> int:
    """GPUs the NVIDIA driver reports (cuDeviceGetCount); 0 without a driver or a GPU."""
    cuda = _driver()
    count = ctypes.c_int(0)
    if cuda is None or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


@functools.cache
def set_gpu_wait(mode: str, device: int = 0) -> bool:
    """Make this process's threads wait for GPU `device` as `mode` says ("block" or "spin"): the primary
    context's scheduling flag, which torch's context is. Call before the process's first CUDA work. False
    (nothing changed) without a driver or GPU, or when the driver refuses."""
    if mode not in _SCHED_FLAGS:
        raise ValueError(f"unknown GPU wait {mode!r}; use one of {', '.join(GPU_WAITS)}")
    cuda = _driver()
    handle = ctypes.c_int(0)
    if cuda is None or cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return False
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    result = set_flags(handle, _SCHED_FLAGS[mode])
    if result != 0:
        log.info("GPU wait %s not set (driver error %d); CUDA's default applies", mode, result)
        return False
    return True
