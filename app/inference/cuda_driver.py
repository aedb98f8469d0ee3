"""The NVIDIA driver calls made without torch (libcuda through ctypes): how many GPUs there are, how a
process's threads wait for its GPU, and a retained handle on a GPU's primary context for libraries that take
one (PyNvVideoCodec's `cudacontext=`).

Why the wait matters: CUDA's default (CU_CTX_SCHED_AUTO) spins a waiting thread while the process has fewer
contexts than the host has cores, so every detector and embedder process burns a core for as long as its GPU
works; on a host decoding 16 cameras those cores are the limit. "block" makes the thread sleep until the GPU
is done (the driver wakes it), "spin" busy-waits (a few microseconds sooner).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

GPU_WAITS = ("block", "spin")
_SCHED_FLAGS = {"spin": 0x01, "block": 0x04}  # CU_CTX_SCHED_SPIN, CU_CTX_SCHED_BLOCKING_SYNC
_SCHED_MASK = 0x07
# What the driver reports in a context's flags: CU_CTX_SCHED_AUTO (0) spins while the process has fewer
# contexts than the host has cores.
SCHED_NAMES = {0x00: "auto", 0x01: "spin", 0x02: "yield", 0x04: "block"}


class NoCudaDriver(RuntimeError):
    """libcuda, or the GPU asked for, is not there (or the driver refused): the message says which."""


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
    _check_wait(mode)
    cuda = _driver()
    handle = ctypes.c_int(0)
    if cuda is None or cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return False
    result = _set_sched(cuda, handle, mode)
    if result != 0:
        log.info("GPU wait %s not set (driver error %d); CUDA's default applies", mode, result)
        return False
    return True


def _check_wait(mode: str) -> None:
    if mode not in _SCHED_FLAGS:
        raise ValueError(f"unknown GPU wait {mode!r}; use one of {', '.join(GPU_WAITS)}")


def _set_sched(cuda: ctypes.CDLL, handle: ctypes.c_int, mode: str) -> int:
    """cuDevicePrimaryCtxSetFlags with `mode`'s scheduling flag; the driver's result (0: set)."""
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    return int(set_flags(handle, _SCHED_FLAGS[mode]))


@dataclass
class PrimaryContext:
    """One retained reference to GPU `device`'s primary context (the context torch uses, and the one
    PyNvVideoCodec's decoder retains itself when given none). `handle` is the CUcontext as an integer, what
    a library's `cudacontext=` takes; `wait` is the scheduling the driver reports for the context once
    retained ("auto", "spin", "yield" or "block"). `release()` once whatever was given the handle is gone."""

    device: int
    handle: int
    wait: str
    _release: Callable[[], object] = field(repr=False)
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


def retain_primary_context(device: int = 0, wait: str | None = "block") -> PrimaryContext:
    """Retain GPU `device`'s primary context with its threads' wait set to `wait` first ("block" or "spin";
    None leaves the flags as they are). The driver applies the flag when the retain makes the context
    (the first in this process); the result's `wait` says what it reports. NoCudaDriver without libcuda,
    without that GPU, or when the driver refuses the retain."""
    if wait is not None:
        _check_wait(wait)
    cuda = _driver()
    if cuda is None:
        raise NoCudaDriver("libcuda (the NVIDIA driver) does not load or does not initialise here")
    dev = ctypes.c_int(0)
    if cuda.cuDeviceGet(ctypes.byref(dev), device) != 0:
        raise NoCudaDriver(f"the NVIDIA driver reports no GPU {device}")
    if wait is not None and (result := _set_sched(cuda, dev, wait)) != 0:
        log.info("GPU wait %s not set on GPU %d (driver error %d)", wait, device, result)
    context = ctypes.c_void_p(0)
    result = cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), dev)
    if result != 0 or not context.value:
        raise NoCudaDriver(
            f"the NVIDIA driver did not retain GPU {device}'s primary context (error {result})"
        )
    flags, active = ctypes.c_uint(0), ctypes.c_int(0)
    cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active))
    release = getattr(cuda, "cuDevicePrimaryCtxRelease_v2", None) or cuda.cuDevicePrimaryCtxRelease
    return PrimaryContext(
        device=device,
        handle=int(context.value),
        wait=SCHED_NAMES.get(flags.value & _SCHED_MASK, hex(flags.value & _SCHED_MASK)),
        _release=functools.partial(release, dev),
    )
