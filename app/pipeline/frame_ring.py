"""A ring of N fixed-size frame slots in one `multiprocessing.shared_memory` segment, with explicit ownership.

Slot life cycle (one lock, a `multiprocessing.Lock`, guards every state change; pixels are read and written
outside the lock because ownership says who may touch them):

    FREE -acquire (capture)-> WRITING -publish(seq)-> QUEUED -claim (detect)-> CLAIMED -release (sink)-> FREE

- Only the capture stage writes pixels, and only into a slot it acquired.
- A frame message carries (slot, seq). `claim` succeeds only while the slot still holds that seq and is
  QUEUED; from then on the slot belongs to the pipeline until the last consumer (the sink) releases it.
- Files (`live=False`): `acquire` waits for a FREE slot, so no frame is ever lost. With the handle's `freed`
  semaphore (released whenever a slot becomes FREE) it sleeps until a slot is freed instead of polling: a
  file read at full speed waits for slots most of the time, and polling every millisecond cost its capture
  process more CPU than decoding (2.3 ms a frame against 1.0 ms for a 720p decode, 4 cameras here).
- Live sources (`live=True`): the newest frame wins. With no FREE slot, the oldest QUEUED frame (published,
  not yet taken by detection) is overwritten and counted as dropped; its message then fails `claim` and is
  skipped. When every slot is CLAIMED the new frame itself is dropped (counted): frames already being
  processed are never overwritten, so no stage reads pixels that change under it.

Pixel format: a ring's slots hold BGR (H, W, 3) frames, or NV12 (H*3//2, W) ones where an NVDEC capture
keeps its decoder's planes for a detector that converts on the GPU (`app.vision.pixel_format`). The header
records the picture's (H, W, 3) and the format (its once reserved word: 0 = BGR, so older rings read as
BGR); `shape` is the slot's array shape, `frame_shape` the picture's. Consumers read a frame whatever its
format through `FramePixels(ring.frame(slot), ring.format)` (app/vision/pixel_format.py: the conversions
are vision's; this framework imports no domain package).

The parent (supervisor) creates the segment and unlinks it in a `finally`; stages attach by name. On Python
< 3.13 attaching also registers the segment with the resource tracker, which then warns about (and unlinks)
"leaked" segments; attaching processes therefore suppress that registration (`track=False` on 3.13+).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FREE, WRITING, QUEUED, CLAIMED = 0, 1, 2, 3
STATE_NAMES = {FREE: "free", WRITING: "writing", QUEUED: "queued", CLAIMED: "claimed"}

_MAGIC = 0x46524D52494E4731  # "FRMRING1"
_HEADER_WORDS = 8  # magic, slots, height, width, channels (the picture's), dropped, published, pixel format
_H_DROPPED, _H_PUBLISHED, _H_FORMAT = 5, 6, 7
# Pixel formats a slot may hold (their conversions: app/vision/pixel_format.py). The code each has in the
# header's once reserved word: 0 keeps rings made before it BGR.
BGR, NV12 = "bgr", "nv12"
PIXEL_FORMATS = (BGR, NV12)
_FORMAT_CODES = {BGR: 0, NV12: 1}
_FORMATS = {code: name for name, code in _FORMAT_CODES.items()}
_ALIGN = 64
# A lock held longer than this: its holder died with it and nobody freed it (the supervisor does in ~0.6 s).
_LOCK_TIMEOUT_S = 10.0
_WAIT_POLL_S = 0.001

_attach_lock = threading.Lock()


def slot_shape(pixel_format: str, frame_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The array shape of a slot holding an (H, W, 3) picture in `pixel_format`: (H, W, 3) BGR, or NV12's
    (H*3//2, W), the Y plane then the interleaved U/V plane at half resolution (H and W even)."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel format {pixel_format!r} is not one of {', '.join(PIXEL_FORMATS)}")
    if pixel_format == BGR:
        return (h, w, 3)
    if h % 2 or w % 2:
        raise ValueError(f"NV12 needs an even frame size, got {w}x{h}")
    return (h * 3 // 2, w)


class RingLockTimeout(RuntimeError):
    """The ring lock could not be taken: a process died while holding it."""


def _layout(slots: int, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(offset of the slot table, offset of the pixels, total bytes)."""
    table = _HEADER_WORDS * 8
    pixels = table + 2 * slots * 8
    pixels = (pixels + _ALIGN - 1) // _ALIGN * _ALIGN
    frame_bytes = int(np.prod(shape))
    return table, pixels, pixels + slots * frame_bytes


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    # Python 3.11/3.12 register every attach with the resource tracker (bpo-39959): swap the call out while
    # attaching, so only the creator's registration exists and the creator's unlink() clears it.
    with _attach_lock:
        register = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register


class FrameRing:
    """The shared ring. Create it once (the owner unlinks it), attach everywhere else."""

    def __init__(self, shm: shared_memory.SharedMemory, lock: Any, owner: bool, freed: Any = None) -> None:
        self._shm = shm
        self._lock = lock
        # A multiprocessing Semaphore released on every slot freed: wakes a waiting acquire. Its count is only
        # a hint (kept near the number of FREE slots): the slot table under the lock is what counts.
        self._freed = freed
        self.owner = owner
        header = np.ndarray((_HEADER_WORDS,), np.int64, shm.buf, 0)
        if int(header[0]) != _MAGIC:
            raise ValueError(f"shared memory {shm.name!r} is not a frame ring")
        self.slots = int(header[1])
        code = int(header[_H_FORMAT])
        if code not in _FORMATS:
            raise ValueError(f"frame ring {shm.name!r} has an unknown pixel format ({code})")
        self.format: str = _FORMATS[code]
        self.frame_shape: tuple[int, int, int] = (int(header[2]), int(header[3]), int(header[4]))
        self.shape: tuple[int, ...] = slot_shape(self.format, self.frame_shape)  # one slot's array
        table, pixels, _ = _layout(self.slots, self.shape)
        self._header = header
        self._seq = np.ndarray((self.slots,), np.int64, shm.buf, table)
        self._state = np.ndarray((self.slots,), np.int64, shm.buf, table + self.slots * 8)
        self._frames = np.ndarray((self.slots, *self.shape), np.uint8, shm.buf, pixels)

    @classmethod
    def create(
        cls,
        name: str,
        slots: int,
        shape: tuple[int, int, int],
        lock: Any,
        freed: Any = None,
        pixel_format: str = BGR,
    ) -> FrameRing:
        """A new ring of `slots` frames of the picture `shape` (H, W, 3), stored in `pixel_format`."""
        if slots < 2:
            raise ValueError(f"a frame ring needs at least 2 slots, got {slots}")
        shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        data_shape = slot_shape(pixel_format, shape)
        _, _, size = _layout(slots, data_shape)
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        header = np.ndarray((_HEADER_WORDS,), np.int64, shm.buf, 0)
        header[:] = (_MAGIC, slots, *shape, 0, 0, _FORMAT_CODES[pixel_format])
        table, pixels, _ = _layout(slots, data_shape)
        np.ndarray((2 * slots,), np.int64, shm.buf, table)[:] = 0  # seq 0 and FREE everywhere
        del header  # no exported views may outlive close()
        return cls(shm, lock, owner=True, freed=freed)

    @classmethod
    def attach(cls, name: str, lock: Any, freed: Any = None) -> FrameRing:
        return cls(_attach_untracked(name), lock, owner=False, freed=freed)

    @property
    def name(self) -> str:
        return self._shm.name

    # -- locking ------------------------------------------------------------------------------------------

    def _locked(self) -> _Held:
        return _Held(self._lock)

    # -- producer -----------------------------------------------------------------------------------------

    def acquire(self, live: bool, timeout: float = 0.0) -> int | None:
        """A slot to write the next frame into, now owned by the caller (WRITING).

        Files: wait up to `timeout` seconds for a FREE slot; None when there is none yet (call again).
        Live: never waits; overwrites the oldest QUEUED frame (counted as dropped) when nothing is FREE, and
        returns None when every slot is being processed (the new frame is then counted as dropped).
        """
        deadline = time.monotonic() + timeout
        woken = False
        while True:
            with self._locked():
                free = np.flatnonzero(self._state == FREE)
                if free.size:
                    slot = int(free[0])
                    self._state[slot] = WRITING
                    if self._freed is not None and not woken:
                        self._freed.acquire(False)  # this slot's token: the count stays near the FREE slots
                    return slot
                if live:
                    queued = np.flatnonzero(self._state == QUEUED)
                    self._header[_H_DROPPED] += 1
                    if not queued.size:
                        return None
                    slot = int(queued[np.argmin(self._seq[queued])])
                    self._seq[slot] = 0  # the stale frame's message will now fail claim()
                    self._state[slot] = WRITING
                    return slot
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._freed is None:
                time.sleep(_WAIT_POLL_S)
            else:
                # Sleep until a consumer frees a slot (or the timeout); a stale token only wakes it early.
                woken = bool(self._freed.acquire(timeout=remaining))

    def frame(self, slot: int) -> np.ndarray:
        """The slot's data (`shape`: (H,W,3) BGR or (H*3/2,W) NV12) uint8, a view into shared memory: copy
        what must outlive the slot. Readers of pixels wrap it with `format` in app.vision.pixel_format's
        FramePixels, which hides the format."""
        return self._frames[slot, ...]

    @property
    def frame_hw(self) -> tuple[int, int]:
        """The picture's (H, W), whatever the format."""
        return self.frame_shape[0], self.frame_shape[1]

    def publish(self, slot: int, seq: int) -> None:
        """The caller wrote the frame: make it visible as `seq` (must be > 0 and unique) and QUEUED."""
        if seq <= 0:
            raise ValueError("sequence numbers start at 1")
        with self._locked():
            if self._state[slot] != WRITING:
                raise RuntimeError(f"slot {slot} is {STATE_NAMES[int(self._state[slot])]}, not being written")
            self._seq[slot] = seq
            self._state[slot] = QUEUED
            self._header[_H_PUBLISHED] += 1

    def cancel(self, slot: int) -> None:
        """Give back a slot acquired for a frame that never came (the end of a file): no frame is dropped."""
        with self._locked():
            if self._state[slot] == WRITING:
                self._state[slot] = FREE
                self._seq[slot] = 0
                self._signal_freed()

    def drop(self, slot: int, seq: int = 0) -> None:
        """Give a slot back without it reaching the sink, counting its frame as dropped (e.g. a full queue).

        `seq` 0 = a slot the caller acquired and never published; otherwise the published frame to drop.
        """
        with self._locked():
            if seq == 0 and self._state[slot] == WRITING or seq and self._seq[slot] == seq:
                was_free = self._state[slot] == FREE
                self._state[slot] = FREE
                self._seq[slot] = 0
                self._header[_H_DROPPED] += 1
                if not was_free:
                    self._signal_freed()

    # -- consumers ----------------------------------------------------------------------------------------

    def claim(self, slot: int, seq: int) -> bool:
        """Take a published frame into processing; False when it was overwritten (dropped) meanwhile."""
        with self._locked():
            if self._seq[slot] != seq or self._state[slot] != QUEUED:
                return False
            self._state[slot] = CLAIMED
            return True

    def holds(self, slot: int, seq: int) -> bool:
        """Whether the slot still holds frame `seq` (a claimed frame always does until released)."""
        return int(self._seq[slot]) == seq

    def release(self, slot: int, seq: int) -> None:
        """The last consumer is done with frame `seq`: the slot is FREE again."""
        with self._locked():
            if self._seq[slot] == seq and self._state[slot] in (QUEUED, CLAIMED):
                self._state[slot] = FREE
                self._signal_freed()

    def _signal_freed(self) -> None:
        if self._freed is not None:
            self._freed.release()

    # -- counters and state -------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        return int(self._header[_H_DROPPED])

    @property
    def published(self) -> int:
        return int(self._header[_H_PUBLISHED])

    def states(self) -> list[str]:
        return [STATE_NAMES[int(s)] for s in self._state]

    # -- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this process's mapping (views from `frame()` must be gone)."""
        # None, not arrays: the views must go for the mapping to close, and nothing reads them after close.
        self._header = self._seq = self._state = self._frames = None  # type: ignore[assignment]
        try:
            self._shm.close()
        except BufferError:
            # A view is still alive somewhere (e.g. a frame being drawn); the mapping goes with the process.
            log.debug("frame ring %s: views still exported at close", self._shm.name)

    def unlink(self) -> None:
        """Remove the segment's name (owner only); mappings stay valid until closed."""
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


class _Held:
    """Context manager: the ring lock with a timeout, so a dead lock holder cannot hang every stage."""

    __slots__ = ("_lock",)

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=_LOCK_TIMEOUT_S):
            raise RingLockTimeout("frame ring lock not released: a stage died while holding it")

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@dataclass
class FrameRingHandle:
    """What a stage is given: the ring's name and lock. Attaches on first use, in the stage's own process.

    The supervisor creates the ring only after capture has reported the frame size, so stages must not
    attach in setup(); `ring` is first touched while processing a frame, when the ring exists.
    """

    name: str
    lock: Any
    freed: Any = None  # a multiprocessing Semaphore: a file's capture sleeps on it for a free slot
    _ring: FrameRing | None = field(default=None, repr=False)

    @property
    def ring(self) -> FrameRing:
        if self._ring is None:
            self._ring = FrameRing.attach(self.name, self.lock, self.freed)
        return self._ring

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "lock": self.lock, "freed": self.freed, "_ring": None}


class StreamRings:
    """The rings of every stream a stage serves (one per camera), by stream; one handle = stream 0.

    Like a handle, it attaches each ring on first use, in the stage's own process."""

    def __init__(self, handles: FrameRingHandle | Mapping[int, FrameRingHandle]) -> None:
        self.handles: dict[int, FrameRingHandle] = (
            {0: handles} if isinstance(handles, FrameRingHandle) else dict(handles)
        )

    def ring(self, stream: int) -> FrameRing:
        return self.handles[stream].ring

    def __iter__(self) -> Iterator[int]:
        return iter(self.handles)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
