"""Capture stage: reads frames from the source into the shared-memory ring and announces them.

- setup() opens the source and reads its first frame (so a dead source fails at start, with one line) and
  reports the frame shape and FPS the supervisor sizes the ring with.
- Files are paced at their own FPS (or `fps_target`), or read as fast as the pipeline takes them with
  `max_speed`; a file frame waits for a free slot, so none is lost. A file that ends (or whose data runs
  out, e.g. a truncated download) is the end of the run, never a reconnect.
- Live sources (URLs, webcams) are read as they come; the ring's newest-wins policy drops stale frames, and a
  frame that finds the detection queue full is dropped too (both counted). `fps_target` caps a live rate by
  skipping frames. A paced file with `live_file` (LIVE_FILES, the benchmark's `--live`) is read like a file
  but handled as live (newest frame wins, tracking never waits), and still ends at its last frame.
- `decoder` (DECODER): OpenCV/FFmpeg or NVDEC for files and stream URLs (`nvdec.open_capture`).
- Pixel format: the ring stores what the decoder hands out: BGR, or NV12 where NVDEC decodes and
  `nvdec_format` (FRAME_FORMAT, resolved by `nvdec.nvdec_frame_format`) asks for it; the first frame's
  format is reported in `SourceInfo.pixel_format` and the supervisor makes the ring so. Frames are then
  copied in as they come; only a frame in another format than the ring's (a camera back through another
  decoder) or of another size (letterboxed), and placeholders, are converted (`pixel_format.write_bgr`).

Live sources that drop or stall are reconnected, never the end of the run:
- A read that fails (connection cut, camera gone) or takes about the whole read timeout (a stalled stream:
  FFmpeg's RTSP reader hands out buffered frames, each after a full timeout, before it fails) loses the
  source. The stage then reopens it on a capped exponential backoff (`reconnect.SOURCE_BACKOFF`: at once,
  then 0.1 s doubling to 0.5 s), returning to the runner between attempts so a stop is seen at once.
- Meanwhile it sends a placeholder frame every `status_every_s` (the last frame, dimmed, with
  `meta.status` = "reconnecting to ...") so the GUI keeps drawing and says so; the other stages run on.
- The first frame after the gap starts a new `meta.segment`, which tells recognition to reset its tracks.
- A camera that comes back with another resolution is letterboxed into the ring's frame size (the size of
  the first frame: the ring cannot grow while the pipeline runs), aspect kept, with one warning per new
  size; boxes and tracks are then in the ring's pixels.

When the supervisor restarts a dead capture process (live sources only), the new process continues from
`restart_state` (shared doubles the supervisor owns): sequence numbers and frame indices go on where the
dead one stopped, and a new segment starts. A restarted process never fails on an unreachable source: it
starts in the reconnecting state instead.

URLs appear in messages only masked (`sources.mask_url`); errors from libraries are scrubbed of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import cv2
import numpy as np

from app.errors import UserError
from app.pipeline.cpu_meter import ModelCpu
from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.messages import FrameMeta, FrameRef, SourceInfo, StageStamp
from app.pipeline.reconnect import SOURCE_BACKOFF, BackoffPolicy, RetrySchedule
from app.pipeline.restart_state import RestartState
from app.pipeline.stage_runner import NOTHING_YET, POLL_S, Capabilities
from app.stages.nvdec import delivered_format, open_capture
from app.stages.sources import (
    DEFAULT_FPS,
    OPEN_TIMEOUT_S,
    READ_TIMEOUT_S,
    SourceSpec,
    frame_count,
    parse_source,
    quiet_video_backend,
    scrub_secrets,
    source_fps,
)
from app.vision.pixel_format import BGR, FramePixels, write_bgr

log = logging.getLogger(__name__)

_REANCHOR_FRAMES = 2  # a paced file running more than this many frames late restarts its clock
STALL_FRACTION = 0.8  # a live read taking this share of the read timeout is a stall, not a slow frame
STATUS_EVERY_S = 0.5  # placeholder frames while a source is away: the GUI stays responsive and says why
PLACEHOLDER_DIM = 0.35


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `a` is `b`'s memory with its shape (OpenCV decoded into the slot rather than a new array)."""
    return a.shape == b.shape and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


class CaptureError(RuntimeError):
    """An unexpected capture failure, its message scrubbed of the source URL's credentials."""


class CaptureStage:
    name = "capture"
    capabilities = Capabilities(source=True, restartable=True)

    def __init__(
        self,
        source: str,
        frames: FrameRingHandle,
        fps_target: float = 0.0,
        max_speed: bool = False,
        max_frames: int | None = None,
        verbose: bool = False,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        backoff: BackoffPolicy = SOURCE_BACKOFF,
        status_every_s: float = STATUS_EVERY_S,
        stream: int = 0,
        camera: str = "default",
        live_file: bool = False,
        decoder: str = "auto",
        decode_threads: int = 0,
        nvdec_format: str = BGR,
        nvdec_memory: str = "host",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.live_file = live_file  # a paced file played as a live camera (latency benchmarks)
        self.decoder = decoder
        self.decode_threads = int(decode_threads)  # FFmpeg's threads, 0 = its own choice
        self.nvdec_format = nvdec_format  # the pixel format an NVDEC decoder hands out (the ring keeps it)
        self.nvdec_memory = nvdec_memory  # where NVDEC decodes to (NVDEC_MEMORY): host or device
        # Pacing, stamps, stalls and outages all read this clock (tests drive it: test_capture_stage.py).
        self.clock = clock
        self.sleep = sleep
        self.stream = int(stream)
        self.camera = camera
        self.frames = frames
        self.fps_target = float(fps_target)
        self.max_speed = max_speed
        self.max_frames = max_frames
        self.verbose = verbose
        self.open_timeout_s = float(open_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.backoff = backoff
        self.status_every_s = float(status_every_s)
        # Shared state that outlives this process (set by the supervisor before the process starts).
        self.restart_state: RestartState | None = None
        self.frames_read = 0  # frames taken from the source (live: dropped and skipped ones included)
        self.frames_skipped = 0
        self.end_reason = "end of stream"
        self.live = False
        self.segment = 0
        self.reconnects = 0
        self.gaps_s: list[float] = []  # how long each outage lasted, lost to first frame back
        self.restarted = False
        self.declared_frames: int | None = None  # frames a file's container says it has
        self._cap: cv2.VideoCapture | None = None
        self._cap_format = BGR  # what self._cap hands out
        self._pending: tuple[FramePixels, float, float, int] | None = None  # frame, read start/end, index
        self._seq = 0  # the last sequence number published
        self._clock_start: float | None = None
        self._live_start: float | None = None
        self._last_emit = -1e9
        self._last_image: FramePixels | None = None
        self._scratch: FramePixels | None = None  # live sources decode into it, then copy it into a slot
        self._read_problem = ""
        self._outage: RetrySchedule | None = None
        self._next_status = 0.0
        self._sizes_seen: set[tuple[int, int]] = set()
        # The decoder's reads, logged by the runner as this process's "model" CPU against the loop's.
        self.model_cpu = ModelCpu()

    # -- stage API ----------------------------------------------------------------------------------------

    def setup(self) -> SourceInfo:
        quiet_video_backend(self.verbose)
        spec = parse_source(self.source)
        self.spec = spec
        try:
            return self._setup(spec)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - library errors may quote the URL: scrub, keep one line
            raise CaptureError(scrub_secrets(f"{type(exc).__name__}: {exc}", spec)) from None

    def _setup(self, spec: SourceSpec) -> SourceInfo:
        # A paced file played as live: newest frame wins and tracking never waits, but it still ends.
        self.live = spec.live or (self.live_file and not self.max_speed)
        self.restarted = self._resume()
        if self.restarted and not spec.live:
            raise CaptureError("a file source is not resumed by a restarted capture")
        shape: tuple[int, ...] | None = None
        self.fps = DEFAULT_FPS
        try:
            self._cap = self._open(spec, self.nvdec_format)
        except UserError:
            if not self.restarted:
                raise  # at start a dead source is a user error (fail fast); after a restart, reconnect
        pixel_format = self._cap_format
        if self._cap is not None:
            self.fps = source_fps(self._cap) or DEFAULT_FPS
            first = self._read(self._cap)
            if first is None:
                self._release()
                if not self.restarted:
                    raise UserError(
                        f"video source {spec.display} opened but gave no frame; check that it plays"
                    )
            else:
                shape = first[0].shape
                self._sizes_seen.add((shape[1], shape[0]))
                # Live: the first frame is stale by the time the models are loaded. Files keep it.
                self._pending = None if spec.live else first
        if self._cap is None:
            self._start_outage("not reachable after the capture restart")
        if self.max_speed or spec.live:
            self.pace_fps = 0.0
        else:
            self.pace_fps = self.fps_target or self.fps
        if shape is not None:
            log.info("source %s: %dx%d at %.2f fps (%s)", spec.display, shape[1], shape[0], self.fps,
                     "live" if self.live else "file")  # fmt: skip
        self.declared_frames = None if spec.live or self._cap is None else frame_count(self._cap)
        return SourceInfo(
            frame_shape=(int(shape[0]), int(shape[1]), int(shape[2])) if shape is not None else None,
            fps=self.fps,
            live=self.live,
            source=spec.display,
            frame_count=self.declared_frames,
            restarted=self.restarted,
            stream=self.stream,
            camera=self.camera,
            pixel_format=pixel_format,
        )

    def _open(self, spec: SourceSpec, nvdec_format: str) -> cv2.VideoCapture:
        cap = open_capture(
            spec,
            self.decoder,
            self.open_timeout_s,
            self.read_timeout_s,
            self.decode_threads,
            nvdec_format,
            self.nvdec_memory,
        )
        self._cap_format = delivered_format(cap)
        return cap

    def produce(self) -> FrameRef | None:
        """The next frame in the ring as a FrameRef; None at the end; NOTHING_YET while waiting."""
        try:
            return self._produce()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise CaptureError(scrub_secrets(f"{type(exc).__name__}: {exc}", self.spec)) from None

    def _produce(self) -> FrameRef | None:
        if self._pending is None and self._cap is not None and not self.live:
            return self._produce_direct()
        if self._pending is None:
            if self.max_frames is not None and self.frames_read >= self.max_frames:
                self.end_reason = f"frame limit reached ({self.max_frames})"
                return None
            if self._cap is None:
                return self._while_away()
            if not self._pace():
                return NOTHING_YET
            # The last frame's array is decoded into again (no new array a frame): it was copied to its slot.
            scratch = self._scratch
            into = scratch.data if scratch is not None and scratch.format == self._cap_format else None
            self._pending = self._read(self._cap, into=into)
            if self._pending is not None:
                self._scratch = self._pending[0]
            if self._pending is None:
                if not self.spec.live:
                    self.end_reason = "end of stream"
                    self._check_complete()
                    return None
                self._lose(self._read_problem)
                return NOTHING_YET
            # Live cap: skip frames that come sooner than the target rate allows.
            live_cap = self.spec.live and self.fps_target > 0
            if live_cap and self._pending[2] - self._last_emit < 1 / self.fps_target:
                self._pending = None
                self.frames_skipped += 1
                return NOTHING_YET
        ring = self.frames.ring
        slot = ring.acquire(live=self.live, timeout=POLL_S)
        if slot is None:
            if self.live:
                self._pending = None  # every slot is busy: this frame is dropped (the ring counted it)
            return NOTHING_YET  # a file frame waits for a slot
        pending, self._pending = self._pending, None
        return self._publish(slot, *pending, written=False)

    def _produce_direct(self) -> FrameRef | None:
        """A file frame decoded straight into a free slot (the frame's one copy, no array in between)."""
        assert self._cap is not None
        if self.max_frames is not None and self.frames_read >= self.max_frames:
            self.end_reason = f"frame limit reached ({self.max_frames})"
            return None
        if not self._pace():
            return NOTHING_YET
        ring = self.frames.ring
        slot = ring.acquire(live=False, timeout=POLL_S)
        if slot is None:
            return NOTHING_YET  # the frame waits for a slot, still undecoded
        target = ring.frame(slot)
        read = self._read(self._cap, into=target if self._cap_format == ring.format else None)
        if read is None:
            ring.cancel(slot)
            self.end_reason = "end of stream"
            self._check_complete()
            return None
        return self._publish(slot, *read, written=_same_buffer(read[0].data, target))

    def _publish(
        self, slot: int, image: FramePixels, read_start: float, read_end: float, index: int, written: bool
    ) -> FrameRef:
        """Frame `index` into `slot` (unless the decoder `written` it there already), published, announced."""
        ring = self.frames.ring
        if index == 0:
            # Read during setup, long before the start: keep its read time, not its age.
            now = self.clock()
            read_start, read_end = now - (read_end - read_start), now
        if self._clock_start is None and self.pace_fps > 0:
            self._clock_start = read_end - index / self.pace_fps
        target = ring.frame(slot)
        if written:
            pass
        elif image.shape != ring.frame_shape:
            write_bgr(target, ring.format, self._letterbox(image.bgr(), ring.frame_shape))
        elif image.format == ring.format:
            np.copyto(target, image.data)
        else:
            write_bgr(target, ring.format, image.bgr())  # a camera back through another decoder
        if self.live:
            self._last_image = image  # placeholders during an outage show it (dimmed)
        self._seq += 1
        ring.publish(slot, self._seq)
        self._last_emit = read_end
        if self.live:
            assert self._live_start is not None
            source_time = read_end - self._live_start
        else:
            source_time = index / self.fps
        meta = FrameMeta(
            slot=slot,
            seq=self._seq,
            frame_index=index,
            source_time=source_time,
            width=int(ring.frame_shape[1]),
            height=int(ring.frame_shape[0]),
            stamps=[StageStamp(self.name, read_start, read_end)],
            segment=self.segment,
            stream=self.stream,
        )
        self._remember()
        return FrameRef(meta)

    def discard(self, msg: FrameRef) -> None:
        """A live frame found the detection queue full: give its slot back, counted as dropped."""
        self.frames.ring.drop(msg.meta.slot, msg.meta.seq)

    def close(self) -> None:
        self._release()
        self.frames.close()
        if self.frames_skipped:
            log.info("skipped %d frames to stay at %.1f fps", self.frames_skipped, self.fps_target)
        if self.reconnects:
            log.info("source reconnected %d times; gaps %s s", self.reconnects,
                     ", ".join(f"{g:.2f}" for g in self.gaps_s))  # fmt: skip

    # -- reading ------------------------------------------------------------------------------------------

    def _read(
        self, cap: cv2.VideoCapture, into: np.ndarray | None = None
    ) -> tuple[FramePixels, float, float, int] | None:
        """The next frame (in the format `cap` hands out) with its read times and index; None (and
        `_read_problem`) when there is none.

        `into`: decode into this array (a ring slot) when the frame has its shape; else a new array."""
        start = self.clock()
        with self.model_cpu.measure():
            ok, image = cap.read() if into is None else cap.read(into)
        end = self.clock()
        took = end - start
        if not ok or image is None:
            stalled = self.live and took >= STALL_FRACTION * self.read_timeout_s
            self._read_problem = (
                f"no frame for {took:.1f} s" if stalled else "connection lost or stream ended"
            )
            return None
        if self.live and took >= STALL_FRACTION * self.read_timeout_s:
            # A frame after a read timeout is one FFmpeg buffered before the stall, not the stream's return.
            self._read_problem = f"stalled: one frame in {took:.1f} s"
            return None
        if self._live_start is None:
            self._live_start = end
        pixel_format = self._cap_format  # set by the _open that made `cap`
        if pixel_format == BGR and image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        index = self.frames_read
        self.frames_read += 1
        return FramePixels(image, pixel_format), start, end, index

    def _pace(self) -> bool:
        """True when the next file frame is due (always for live sources and max speed)."""
        if self.pace_fps <= 0:
            return True
        now = self.clock()
        if self._clock_start is None:
            self._clock_start = now - self.frames_read / self.pace_fps
        due = self._clock_start + self.frames_read / self.pace_fps
        if now >= due:
            if now - due > _REANCHOR_FRAMES / self.pace_fps:
                self._clock_start = now - self.frames_read / self.pace_fps  # fell behind: no catch-up burst
            return True
        self.sleep(min(due - now, POLL_S))
        return self.clock() >= due

    def _check_complete(self) -> None:
        """A file that ends well before the frame count its container declares is truncated or damaged:
        what it had was played, and the user should know the rest is missing."""
        declared = self.declared_frames
        if declared and self.frames_read < declared - max(2, declared // 50):  # counts may be approximate
            log.warning("video file %s ended after %d of the %d frames it declares: truncated or damaged",
                        self.spec.display, self.frames_read, declared)  # fmt: skip

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # -- reconnecting -------------------------------------------------------------------------------------

    def _start_outage(self, reason: str) -> None:
        self._outage = RetrySchedule(self.backoff, clock=self.clock)
        self._next_status = self.clock()  # say so at once
        log.warning("source %s lost (%s); reconnecting", self.spec.display, reason)

    def _lose(self, reason: str) -> None:
        self._release()
        self._start_outage(reason)

    def _while_away(self) -> FrameRef | None:
        """One step of the outage: a placeholder when due, else a reconnect attempt when due, else a nap."""
        outage = self._outage
        assert outage is not None
        now = self.clock()
        if now >= self._next_status:
            self._next_status = now + self.status_every_s
            placeholder = self._placeholder(outage)
            if placeholder is not None:
                return placeholder
        if not outage.due():
            self.sleep(min(outage.wait_s(), POLL_S, max(0.0, self._next_status - now)))
            return NOTHING_YET
        attempt = outage.failures + 1
        try:
            cap = self._open(self.spec, self.frames.ring.format)  # the ring's format: nothing to convert
        except UserError:
            delay = outage.failed()
            log.debug("reconnect attempt %d to %s refused; next in %.2f s", attempt, self.spec.display, delay)
            return NOTHING_YET
        first = self._read(cap)
        if first is None:
            cap.release()
            delay = outage.failed()
            log.debug("reconnect attempt %d to %s opened but %s; next in %.2f s", attempt, self.spec.display,
                      self._read_problem, delay)  # fmt: skip
            return NOTHING_YET
        self._cap = cap
        gap = first[2] - outage.started
        self._outage = None
        self.reconnects += 1
        self.gaps_s.append(gap)
        self.segment += 1
        self._pending = first
        log.warning("source %s back after %.2f s (attempt %d)", self.spec.display, gap, attempt)
        return NOTHING_YET

    def _placeholder(self, outage: RetrySchedule) -> FrameRef | None:
        """The last frame, dimmed, flagged with the outage status; None when no slot is free."""
        ring = self.frames.ring
        slot = ring.acquire(live=True)
        if slot is None:
            return None
        target = ring.frame(slot)
        last = self._last_image
        if last is None:
            picture = np.full(ring.frame_shape, 24, np.uint8)
        else:
            picture = last.bgr()
            if picture.shape != ring.frame_shape:
                picture = self._letterbox(picture, ring.frame_shape, warn=False)
            picture = np.multiply(picture, PLACEHOLDER_DIM, out=np.empty_like(picture), casting="unsafe")
        write_bgr(target, ring.format, picture)
        self._seq += 1
        ring.publish(slot, self._seq)
        now = self.clock()
        if self._live_start is None:
            self._live_start = now
        status = (
            f"reconnecting to {self.spec.display} (lost {outage.elapsed_s():.0f} s ago, "
            f"attempt {outage.failures + 1})"
        )
        meta = FrameMeta(
            slot=slot,
            seq=self._seq,
            frame_index=max(0, self.frames_read - 1),
            source_time=now - self._live_start,
            width=int(ring.frame_shape[1]),
            height=int(ring.frame_shape[0]),
            stamps=[StageStamp(self.name, now, now)],
            segment=self.segment,
            status=status,
            stream=self.stream,
        )
        self._remember()
        return FrameRef(meta)

    def _letterbox(self, image: np.ndarray, shape: tuple[int, int, int], warn: bool = True) -> np.ndarray:
        """A stream that changed resolution (e.g. after a reconnect): the BGR `image` fitted into the ring's
        frame `shape`, aspect ratio kept, black bars around."""
        height, width = shape[:2]
        in_h, in_w = image.shape[:2]
        if warn and (in_w, in_h) not in self._sizes_seen:
            self._sizes_seen.add((in_w, in_h))
            log.warning("source %s now sends %dx%d frames; letterboxing them into %dx%d (boxes are in those "
                        "pixels)", self.spec.display, in_w, in_h, width, height)  # fmt: skip
        scale = min(width / in_w, height / in_h)
        new_w, new_h = max(1, round(in_w * scale)), max(1, round(in_h * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        if resized.ndim == 2:
            resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        target = np.zeros(shape, np.uint8)
        target[top : top + new_h, left : left + new_w] = resized[:, :, : shape[2]]
        return target

    # -- restarts -----------------------------------------------------------------------------------------

    def _resume(self) -> bool:
        """Continue from a dead predecessor's state; True when this process is a restart."""
        state = self.restart_state
        if state is None or state.restarts < 1:
            return False
        self._seq = state.seq
        self.frames_read = state.frames_read
        self._live_start = state.live_start
        self.segment = state.segment + 1  # whatever the dead process was doing, there is a gap
        log.info("capture restarted (%d): continuing after frame %d", state.restarts, self.frames_read)
        return True

    def _remember(self) -> None:
        state = self.restart_state
        if state is None:
            return
        state.seq = self._seq
        state.frames_read = self.frames_read
        state.live_start = self._live_start
        state.segment = self.segment
