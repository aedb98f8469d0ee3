"""Where NVDEC's decoded frames wait before the ring: host copies, or GPU buffers (here on torch's CPU
device, which takes the same DLPack frames), both handing back the decoder's NV12 planes unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from app.stages.nvdec_frames import DeviceFrames, HostFrames

HW = (6, 8)  # a tiny frame: NV12 planes of 9 x 8


def _surface(value: int) -> np.ndarray:
    """A decoder's output surface: NV12 planes, distinct per frame."""
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (HW[0] * 3 // 2, HW[1]), dtype=np.uint8)


def test_host_frames_copy_each_frame_out_of_the_reused_surface():
    frames = HostFrames(HW)
    surface = _surface(1)
    kept = frames.keep(surface)
    want = surface.copy()
    surface[:] = 0  # the decoder writes its next frame into the same buffer
    np.testing.assert_array_equal(kept, want)
    slot = np.zeros_like(want)
    assert frames.to_host(kept, slot) is slot
    np.testing.assert_array_equal(slot, want)
    assert frames.to_host(kept) is kept  # no slot: the kept copy itself


def test_device_frames_keep_a_pool_of_buffers_and_copy_only_into_the_slot():
    torch = pytest.importorskip("torch")
    frames = DeviceFrames(HW, pool=3, device="cpu")
    surface = torch.from_numpy(_surface(1))
    kept = [frames.keep(surface)]
    surface.copy_(torch.from_numpy(_surface(2)))  # the decoder reuses its surface
    kept.append(frames.keep(surface))
    np.testing.assert_array_equal(frames.to_host(kept[0]), _surface(1))  # not overwritten by the reuse
    slot = np.zeros((HW[0] * 3 // 2, HW[1]), np.uint8)
    assert frames.to_host(kept[1], slot) is slot
    np.testing.assert_array_equal(slot, _surface(2))
    kept.append(frames.keep(torch.from_numpy(_surface(3))))
    kept.append(frames.keep(torch.from_numpy(_surface(4))))
    assert kept[3] is kept[0]  # the pool's first buffer again, `pool` frames later
    np.testing.assert_array_equal(frames.to_host(kept[3]), _surface(4))
