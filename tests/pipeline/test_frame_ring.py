"""The shared-memory frame ring: ownership, newest-wins for live sources, no loss for files, cleanup."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.pipeline.frame_ring import FrameRing, FrameRingHandle
from app.vision.pixel_format import NV12, FramePixels, bgr_to_nv12, nv12_to_bgr

REPO = Path(__file__).resolve().parents[2]
SHAPE = (6, 8, 3)


@pytest.fixture
def ring():
    lock = multiprocessing.get_context("spawn").Lock()
    name = f"facering-test-{os.getpid()}-{time.monotonic_ns()}"
    created = FrameRing.create(name, 3, SHAPE, lock)
    yield created
    created.close()
    created.unlink()


def write(ring: FrameRing, value: int, seq: int, live: bool = False) -> int | None:
    slot = ring.acquire(live=live)
    if slot is None:
        return None
    ring.frame(slot)[:] = value
    ring.publish(slot, seq)
    return slot


def test_geometry_and_pixels_are_shared_between_handles(ring):
    other = FrameRing.attach(ring.name, ring._lock)
    assert other.slots == 3 and other.shape == SHAPE
    slot = write(ring, 7, seq=1)
    assert other.claim(slot, 1)
    assert int(other.frame(slot).sum()) == 7 * np.prod(SHAPE)
    other.close()


def test_a_ring_is_bgr_unless_made_nv12_and_says_so_to_every_handle(ring):
    assert ring.format == "bgr" and ring.frame_shape == SHAPE and ring.frame_hw == (6, 8)
    lock = multiprocessing.get_context("spawn").Lock()
    name = f"facering-test-nv12-{os.getpid()}-{time.monotonic_ns()}"
    picture = np.random.default_rng(0).integers(0, 256, (36, 64, 3), dtype=np.uint8)
    created = FrameRing.create(name, 3, (36, 64, 3), lock, pixel_format=NV12)
    try:
        other = FrameRing.attach(name, lock)
        assert other.format == NV12 and other.frame_shape == (36, 64, 3) and other.frame_hw == (36, 64)
        assert other.shape == (54, 64) and other.frame(0).shape == (54, 64)  # H*3/2 rows of W bytes
        assert created.frame(0).nbytes * 2 == 36 * 64 * 3  # half a BGR frame's bytes
        assert int(created._header[7]) == 1 and int(ring._header[7]) == 0  # the header's format word
        slot = created.acquire(live=False)
        created.frame(slot)[:] = bgr_to_nv12(picture)
        created.publish(slot, 1)
        assert other.claim(slot, 1)
        pixels = FramePixels(other.frame(slot), other.format)
        assert pixels.format == NV12 and pixels.shape == (36, 64, 3)
        assert np.array_equal(pixels.bgr(), nv12_to_bgr(bgr_to_nv12(picture)))
        other.close()
    finally:
        created.close()
        created.unlink()
    with pytest.raises(ValueError, match="even"):
        FrameRing.create(name + "-odd", 3, (35, 64, 3), lock, pixel_format=NV12)
    with pytest.raises(ValueError, match="not one of"):
        FrameRing.create(name + "-rgb", 3, (36, 64, 3), lock, pixel_format="rgb")


def test_ownership_cycle_free_writing_queued_claimed_free(ring):
    slot = ring.acquire(live=False)
    assert ring.states()[slot] == "writing"
    with pytest.raises(ValueError):
        ring.publish(slot, 0)  # sequence numbers start at 1
    ring.publish(slot, 1)
    assert ring.states()[slot] == "queued"
    with pytest.raises(RuntimeError):
        ring.publish(slot, 2)  # only a slot being written can be published
    assert not ring.claim(slot, 2)  # wrong sequence
    assert ring.claim(slot, 1)
    assert not ring.claim(slot, 1)  # claimed once
    assert ring.states()[slot] == "claimed"
    ring.release(slot, 99)  # a stale release changes nothing
    assert ring.states()[slot] == "claimed"
    ring.release(slot, 1)
    assert ring.states()[slot] == "free"
    assert ring.published == 1 and ring.dropped == 0


def test_file_mode_waits_for_a_free_slot_and_loses_nothing(ring):
    slots = [write(ring, i, seq=i + 1) for i in range(3)]
    assert ring.acquire(live=False, timeout=0.05) is None  # full: a file frame waits, nothing is overwritten
    assert ring.dropped == 0
    for slot, seq in zip(slots, (1, 2, 3), strict=True):
        assert ring.claim(slot, seq)

    released = threading.Event()

    def release_later():
        time.sleep(0.1)  # most likely while the acquire below is already waiting (either order must work)
        released.set()
        ring.release(slots[1], 2)

    threading.Thread(target=release_later).start()
    slot = ring.acquire(live=False, timeout=60.0)  # a failure guard: the wait ends with the release
    assert slot == slots[1] and released.is_set()  # the slot that was freed, once it was freed
    assert ring.dropped == 0


@pytest.fixture
def signalled_ring():
    """A ring with the freed-slot semaphore, as the supervisor makes them."""
    ctx = multiprocessing.get_context("spawn")
    lock, freed = ctx.Lock(), ctx.Semaphore(0)
    name = f"facering-test-{os.getpid()}-{time.monotonic_ns()}"
    created = FrameRing.create(name, 3, SHAPE, lock, freed)
    yield created, freed
    created.close()
    created.unlink()


def test_a_waiting_file_frame_is_woken_by_the_slot_being_freed(signalled_ring):
    ring, freed = signalled_ring
    slots = [write(ring, i, seq=i + 1) for i in range(3)]
    for slot, seq in zip(slots, (1, 2, 3), strict=True):
        assert ring.claim(slot, seq)
    waiting = threading.Event()
    got: list = []

    def acquire() -> None:
        waiting.set()
        got.append(ring.acquire(live=False, timeout=60.0))  # a failure guard: the release ends the wait

    thread = threading.Thread(target=acquire)
    thread.start()
    waiting.wait(60.0)
    ring.release(slots[2], 3)
    thread.join(60.0)
    assert got == [slots[2]] and ring.dropped == 0


def test_the_freed_count_stays_within_the_slots_when_nobody_waits(signalled_ring):
    ring, freed = signalled_ring
    for seq in range(1, 101):  # a capture that never waits: every slot it takes was freed before
        slot = write(ring, seq % 250, seq=seq)
        assert slot is not None and ring.claim(slot, seq)
        ring.release(slot, seq)
    assert freed.get_value() <= ring.slots  # no stale tokens pile up to wake a later wait for nothing


def test_cancel_gives_back_an_acquired_slot_without_counting_a_drop(signalled_ring):
    ring, freed = signalled_ring
    slot = ring.acquire(live=False)
    ring.cancel(slot)
    assert ring.states()[slot] == "free" and ring.dropped == 0 and freed.get_value() == 1
    published = write(ring, 1, seq=1)
    ring.cancel(published)  # only a slot being written is given back this way
    assert ring.states()[published] == "queued"


def test_live_mode_newest_wins_over_the_oldest_queued_frame(ring):
    a, b, c = (write(ring, i, seq=i + 1, live=True) for i in range(3))
    assert ring.claim(a, 1)  # frame 1 is being processed: it must never be overwritten
    d = write(ring, 9, seq=4, live=True)
    assert d == b  # the oldest frame not yet taken by detection made room
    assert ring.dropped == 1
    assert not ring.claim(b, 2)  # its message now fails and is skipped
    assert ring.claim(d, 4) and int(ring.frame(d)[0, 0, 0]) == 9
    assert ring.claim(c, 3)
    # Every slot is in processing: the new frame itself is dropped, nothing is overwritten.
    assert write(ring, 5, seq=5, live=True) is None
    assert ring.dropped == 2
    assert [int(ring.frame(s)[0, 0, 0]) for s in (a, c, d)] == [0, 2, 9]


def test_drop_gives_back_an_unsent_or_a_published_slot(ring):
    slot = ring.acquire(live=True)
    ring.drop(slot)
    assert ring.states()[slot] == "free" and ring.dropped == 1
    slot = write(ring, 1, seq=1, live=True)
    ring.drop(slot, 1)
    assert ring.states()[slot] == "free" and ring.dropped == 2


def test_handle_attaches_lazily_and_pickles_without_the_mapping(ring):
    import pickle

    handle = FrameRingHandle(ring.name, ring._lock)
    assert handle._ring is None
    write(ring, 3, seq=1)
    assert handle.ring.holds(0, 1)
    state = handle.__getstate__()
    assert state["_ring"] is None and state["name"] == ring.name
    handle.close()
    with pytest.raises(RuntimeError):  # a mp lock only pickles while spawning a process
        pickle.dumps(handle)


def test_attach_in_another_process_leaves_no_segment_and_no_tracker_warning(tmp_path):
    """Create in a parent, attach in a spawned child, unlink in the parent: nothing leaks, nothing warns."""
    script = textwrap.dedent(
        """
        import multiprocessing, os, sys
        from app.pipeline.frame_ring import FrameRing

        def child(name, lock):
            ring = FrameRing.attach(name, lock)
            assert ring.claim(0, 1)
            ring.frame(0)[:] = 42
            ring.release(0, 1)
            ring.close()

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            lock = ctx.Lock()
            name = f"facering-leaktest-{os.getpid()}"
            ring = FrameRing.create(name, 2, (4, 4, 3), lock)
            slot = ring.acquire(live=False)
            ring.publish(slot, 1)
            p = ctx.Process(target=child, args=(name, lock))
            p.start(); p.join()
            assert p.exitcode == 0, p.exitcode
            assert int(ring.frame(0)[0, 0, 0]) == 42 and ring.states()[0] == "free"
            ring.close(); ring.unlink()
            print(name)
        """
    )
    script_path = tmp_path / "ring_roundtrip.py"
    script_path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(script_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    assert not Path("/dev/shm", name).exists()
    assert "leaked" not in result.stderr and "resource_tracker" not in result.stderr, result.stderr
