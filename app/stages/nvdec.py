"""NVDEC decoding for the capture stage: which decoder a source gets (`DECODER`), and `NvdecCapture`, the
part of `cv2.VideoCapture` capture uses (`read`, `get`, `release`, `isOpened`) over NVIDIA's PyNvVideoCodec.

Why: on the H200 host one FFmpeg process decodes 1080p H.264 at 640-750 frames/s and 16 of them 1255/s in
all, below what the shared detector takes; NVDEC decodes on the GPU's own video engines (~450 frames/s a
session) and leaves the CPU cores to tracking.

- `DECODER=ffmpeg`: OpenCV/FFmpeg, as always. `DECODER=nvdec`: PyNvVideoCodec for files and stream URLs; a
  missing wheel or GPU is one line saying how to fix it. `DECODER=auto`, the default: NVDEC when the wheel
  imports and the driver reports a GPU, else FFmpeg; a source NVDEC cannot open (e.g. a codec it lacks) then
  falls back to FFmpeg with a warning. Webcams always use OpenCV (V4L2). In the pipeline on the H200
  (16 cameras, default models) NVDEC gave 1072-1145 frames/s against FFmpeg's 842: each capture process
  spends about half the CPU a frame (README, "Several cameras"); an early version that kept OpenCV's
  thread pool for the conversion gave 566 against 646.
- Frames come back to the host as NVDEC's own NV12 surface, which OpenCV converts to BGR straight into
  the shared-memory ring slot (`read(image)`, as FFmpeg's path does), on one OpenCV thread
  (`CONVERT_THREADS`). The decoder is given GPU 0's primary context, retained with blocking sync
  (`DECODER_WAIT`, `cuda_driver.retain_primary_context`, PyNvVideoCodec's `cudacontext=`); given none,
  PyNvVideoCodec 2.x retains that same primary context itself, with CUDA's default wait (spinning while
  the process has fewer contexts than the host has cores): it makes no context of its own a session.
- Measured on the H200 host (testbench/gpu/bench_decode.py, 16 processes x 300 frames of a 1080p H.264
  clip, frames/s in all, CPU ms a frame, in brackets after each stream's first frame;
  testbench/gpu/decode_results_h200.jsonl): NV12 with OpenCV's default threads 838 / 9.3 (6.9), the same
  on the blocking primary context 884 / 8.5 (6.3), with OpenCV on one thread 855 / 6.2 (3.7) blocking and
  847 / 6.1 (3.7) with CUDA's default wait; FFmpeg, one thread a stream, 1347 / 10.2 (9.9); this class
  815 / 10.0 (7.4) before it set one OpenCV thread (with it: not yet measured on a GPU). So the host
  CPU that looked like NVDEC's was OpenCV's thread pool, woken for every conversion in every process, not
  CUDA spinning; the blocking wait is kept (never slower here) but is not what saves the CPU. NVDEC's open
  (context and decoder) costs about 0.7 s of CPU a stream against FFmpeg's 0.1 and most of a 300-frame
  run's wall time, so the frame rate in all stays below FFmpeg's in this benchmark (after the first
  frame the streams' rates add up to 2250-3000 frames/s against FFmpeg's 1633, an upper bound since the
  openings are staggered); in the pipeline that saved CPU (about 6 ms a frame, 16 cameras) did show as
  frames, hence `auto`. The calls used (`CreateDemuxer(filename=)`,
  `CreateDecoder(gpuid, codec, usedevicememory, outputColorType, cudacontext)`, iterating the demuxer,
  `Decode(packet)`, DLPack or `GetPtrToPlane` on host frames) are those of PyNvVideoCodec 2.2.4's samples;
  that stream URLs open through its demuxer is not yet checked on a GPU. Keeping frames on the GPU would
  save the download but needs the ring to live in GPU memory: not done. Measured and not kept: RGB
  converted by PyNvVideoCodec on the GPU into host memory (`OutputColorType.RGB`, OpenCV then only
  reordering channels, 0.25 ms a 1080p frame against 1.5 ms for NV12 -> BGR on the 2-core box) cost more,
  not less: 4.48 against 3.83 ms of CPU a frame (16 streams, bench_decode), 1362 and 1238 against 1640
  FPS in the 16-camera pipeline, GPU 95 % busy against 80 % (the library's own host copy of twice the
  bytes and its conversion on the GPU outweigh OpenCV's conversion; decode_results_h200.jsonl,
  pipeline_results_h200_streams_11_rgb_detectors.jsonl).
- `FRAME_FORMAT` (`nvdec_frame_format`): an NVDEC capture keeps its frames as NV12 in the ring (`read`
  copies the decoder's planes into the slot, 3 MB at 1080p, no conversion) where the detector converts on
  the GPU: `auto` (the default) does so exactly with the torch backend, `nv12` always, `bgr` never (OpenCV
  converts here, as before). FFmpeg-decoded cameras are BGR whatever the setting. On the 2-core box a 1080p
  frame's NV12 copy into a slot took 0.10-0.12 ms against 1.3-1.6 ms for the conversion to BGR
  (`python -m app.vision.pixel_format`). The decoding thread's `.copy()` out of the decoder's reused buffer
  stays: a copy into a preallocated buffer cost the same as that new array (0.10-0.12 against 0.09-0.12 ms:
  the allocator hands the same pages back), and decoding straight into ring slots would hold slots while
  frames wait in the decoded-ahead queue, against a live camera's newest-frame-wins ring.
- Decoding runs on a thread of the capture process into a small queue; `read()` waits at most the read
  timeout for the next frame, so a stalled stream is seen as one, as with FFmpeg's read timeout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from typing import Any

import cv2
import numpy as np

from app.config import env_name
from app.errors import UserError, first_line
from app.inference.cuda_driver import NoCudaDriver, PrimaryContext, cuda_devices, retain_primary_context
from app.stages.nvdec_frames import MEMORIES, DeviceFrames, HostFrames
from app.stages.sources import OPEN_TIMEOUT_S, READ_TIMEOUT_S, SourceSpec, open_video, scrub_secrets
from app.vision.pixel_format import BGR, NV12, check_format

log = logging.getLogger(__name__)

DECODERS = ("auto", "ffmpeg", "nvdec")
FRAME_FORMATS = ("auto", "bgr", "nv12")
WHEEL = "pynvvideocodec==2.2.4"
MODULE = "PyNvVideoCodec"
DECODED_AHEAD = 8  # frames decoded ahead of the reader: NVDEC works while the ring is busy
# How the decoder's threads wait for the GPU: "block" sleeps (the decoder is given the primary context
# retained with CU_CTX_SCHED_BLOCKING_SYNC), None leaves it to the library (the same primary context with
# CUDA's default, which spins while the process has fewer contexts than the host has cores).
DECODER_WAIT: str | None = "block"
# OpenCV threads for the NV12 -> BGR conversion. One: its default pool wakes a thread per core for every
# 1080p frame, and with a capture process per camera that cost 6.3 ms of CPU a frame against 3.7 on one
# thread (H200, 16 streams, testbench/gpu/decode_results_h200.jsonl).
CONVERT_THREADS = 1
_END = object()


class NvdecUnavailable(UserError):
    """NVDEC was asked for (DECODER=nvdec) but cannot be used here; the message names the fix."""


def _setting() -> str:
    return env_name("decoder")


def import_nvc() -> Any:
    """The PyNvVideoCodec module, or NvdecUnavailable saying how to install it (or, where the wheel is there
    but its import fails for want of the driver's video libraries, that it needs them)."""
    try:
        import PyNvVideoCodec as nvc  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise NvdecUnavailable(
            f"{_setting()}=nvdec needs NVIDIA's PyNvVideoCodec, which does not import ({exc}); install it "
            f"with `pip install {WHEEL}` (or the wheel in .whl/), or set {_setting()}=ffmpeg"
        ) from None
    except (RuntimeError, OSError) as exc:  # its import loads the driver's libnvidia-encode and checks it
        raise NvdecUnavailable(
            f"{_setting()}=nvdec: PyNvVideoCodec is installed but does not load ({first_line(exc)}); it "
            f"needs an NVIDIA GPU and its driver with the video libraries, or set {_setting()}=ffmpeg"
        ) from None
    return nvc


@functools.lru_cache(maxsize=1)
def nvdec_problem() -> str | None:
    """Why NVDEC cannot be used here (one line naming the fix), or None when it can (asked once a process:
    every reconnect opens the source again)."""
    try:
        import_nvc()
    except NvdecUnavailable as exc:
        return str(exc)
    if cuda_devices() == 0:
        return (
            f"{_setting()}=nvdec needs an NVIDIA GPU and its driver, and none was found (libcuda reports no "
            f"device); set {_setting()}=ffmpeg"
        )
    return None


def nvdec_frame_format(setting: str, backend: str) -> str:
    """The pixel format NVDEC-decoded frames are kept in (`FRAME_FORMAT`): "nv12" where the detector converts
    on the GPU (auto: the torch backend), else "bgr"."""
    if setting not in FRAME_FORMATS:
        name = env_name("frame_format")
        raise UserError(f"{name}={setting!r} is not a frame format; use one of {', '.join(FRAME_FORMATS)}")
    if setting == "auto":
        return NV12 if backend == "torch" else BGR
    return setting


def delivered_format(cap: Any) -> str:
    """The pixel format `cap.read()` hands out: an NvdecCapture's `pixel_format`, else BGR (OpenCV's)."""
    return cap.pixel_format if isinstance(cap, NvdecCapture) else BGR


def choose_decoder(setting: str, spec: SourceSpec, problem: str | None) -> str:
    """'ffmpeg' or 'nvdec' for this source; `problem` is `nvdec_problem()` (None: NVDEC works here).

    Webcams always get OpenCV. NvdecUnavailable when NVDEC is required (`nvdec`) and `problem` says why
    it cannot be."""
    if setting not in DECODERS:
        raise UserError(f"{_setting()}={setting!r} is not a decoder; use one of {', '.join(DECODERS)}")
    if spec.kind == "webcam" or setting == "ffmpeg":
        return "ffmpeg"
    if problem is None:
        return "nvdec"
    if setting == "nvdec":
        raise NvdecUnavailable(problem)
    return "ffmpeg"


_FELL_BACK: set[str] = set()  # sources DECODER=auto found NVDEC cannot decode, in this process


def open_capture(
    spec: SourceSpec,
    decoder: str,
    open_timeout_s: float,
    read_timeout_s: float,
    threads: int = 0,
    nvdec_format: str = BGR,
    nvdec_memory: str = "host",
) -> Any:
    """An opened capture for `spec` with the decoder `DECODER` picks: cv2.VideoCapture or NvdecCapture
    (`threads`: FFmpeg's decoding threads, 0 = its own choice; `nvdec_format`: the pixel format an
    NvdecCapture hands out, `delivered_format` says which a capture has)."""
    wanted = decoder != "ffmpeg" and spec.kind != "webcam"
    problem = nvdec_problem() if wanted else None
    if choose_decoder(decoder, spec, problem) == "ffmpeg":
        return open_video(spec, open_timeout_s, read_timeout_s, threads)
    try:
        return NvdecCapture(
            spec, read_timeout_s, open_timeout_s, pixel_format=nvdec_format, memory=nvdec_memory
        )
    except UserError:
        if decoder == "nvdec":
            raise
    if spec.display not in _FELL_BACK:  # once a source: a reconnecting camera opens it again and again
        _FELL_BACK.add(spec.display)
        log.warning("NVDEC cannot decode %s; using FFmpeg for it", spec.display)
    return open_video(spec, open_timeout_s, read_timeout_s, threads)


class NvdecCapture:
    """Frames of a file or stream URL decoded by NVDEC, read like a cv2.VideoCapture: BGR uint8, or with
    `pixel_format` "nv12" the decoder's (H*3/2, W) NV12 planes as they are."""

    def __init__(
        self,
        spec: SourceSpec,
        read_timeout_s: float = READ_TIMEOUT_S,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        gpu_id: int = 0,
        gpu_wait: str | None = DECODER_WAIT,
        pixel_format: str = BGR,
        memory: str = "host",
    ) -> None:
        self.pixel_format = check_format(pixel_format)
        if memory not in MEMORIES:
            raise ValueError(f"NVDEC memory {memory!r} is not one of {', '.join(MEMORIES)}")
        self.memory = memory
        nvc = import_nvc()
        cv2.setNumThreads(CONVERT_THREADS)  # for the whole capture process, which converts and resizes only
        self.spec = spec
        self.read_timeout_s = None if spec.kind == "file" else float(read_timeout_s)
        self._fps, self._frames = _container_facts(spec)
        self._context = decoder_context(gpu_id, gpu_wait)
        try:
            self._demuxer = nvc.CreateDemuxer(filename=str(spec.target))
            self._hw = (int(self._demuxer.Height()), int(self._demuxer.Width()))
            self._decoder = create_decoder(
                nvc,
                gpu_id,
                self._demuxer.GetNvCodecId(),
                self._context,
                device_memory=memory == "device",  # host: the library copies each frame down itself
                color=nvc.OutputColorType.NATIVE,  # NV12: kept as it is, or OpenCV converts it on the host
            )
        except Exception as exc:  # noqa: BLE001 - the library's errors name neither the file nor the fix
            self._release_context()
            text = scrub_secrets(f"{type(exc).__name__}: {exc}", spec)
            raise UserError(f"NVDEC cannot decode {spec.display} ({text}); set {_setting()}=ffmpeg") from None
        self._held = self._hold(memory)
        self._frames_out: queue.Queue[Any] = queue.Queue(maxsize=DECODED_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name="nvdec", daemon=True)
        self._thread.start()
        self._open = True
        # The first frame now: a codec the engine lacks fails here, at open (DECODER=auto then uses FFmpeg),
        # not as an empty video later.
        try:
            self._first: Any = self._frames_out.get(timeout=open_timeout_s)
        except queue.Empty:
            self._first = _END
        if self._first is _END:
            self.release()
            raise UserError(f"NVDEC gave no frame of {spec.display}; set {_setting()}=ffmpeg")

    def _hold(self, memory: str) -> HostFrames | DeviceFrames:
        """Where each frame waits between the decoder (which reuses its surfaces) and the ring slot; a GPU
        pool covers the decoded-ahead queue, the first frame, the one being read and the one decoded."""
        if memory == "host":
            return HostFrames(self._hw)
        try:
            return DeviceFrames(self._hw, DECODED_AHEAD + 3)
        except (ImportError, RuntimeError, AssertionError) as exc:  # no torch, or one without CUDA
            self._decoder = None
            self._release_context()
            name = env_name("nvdec_memory")
            raise UserError(
                f"{name}=device needs torch with CUDA in the capture process ({first_line(exc)}); "
                f"install the 'torch' extra or set {name}=host"
            ) from None

    @property
    def gpu_wait(self) -> str:
        """How the decoder's threads wait for the GPU, as the driver reports it for the context it was given
        ("block", ...), or "library's" where it picked its own (CUDA's default wait)."""
        return self._context.wait if self._context is not None else "library's"

    def _decode(self) -> None:
        """Demux and decode to the end (or a stop), each frame's NV12 surface copied out of the decoder's
        buffer (which it reuses) into host memory or a GPU buffer (`memory`)."""
        try:
            for packet in self._demuxer:
                for frame in self._decoder.Decode(packet):
                    if not self._put(self._held.keep(frame)):
                        return
        except Exception as exc:  # noqa: BLE001 - a broken stream ends it; read() says so
            log.debug("nvdec: %s", scrub_secrets(f"{type(exc).__name__}: {exc}", self.spec))
        self._put(_END)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._frames_out.put(item, timeout=0.1)
                return True
        return False

    # -- the part of cv2.VideoCapture the capture stage uses ----------------------------------------------

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name
        return self._open

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        """The next frame as BGR (or NV12, `pixel_format`), converted (copied) into `image` (a ring slot)
        when it has the frame's shape; else a new array."""
        if not self._open:
            return False, None
        if self._first is not None:
            item, self._first = self._first, None
        else:
            try:
                item = self._frames_out.get(timeout=self.read_timeout_s)
            except queue.Empty:
                return False, None  # no frame within the read timeout: a stalled stream
        if item is _END:
            self._open = False
            return False, None
        h, w = self._hw
        shape = (h * 3 // 2, w) if self.pixel_format == NV12 else (h, w, 3)
        if image is None or image.shape != shape or image.dtype != np.uint8:
            image = None
        if self.pixel_format == NV12:
            return True, self._held.to_host(item, image)  # into the slot, else the kept copy itself
        return True, cv2.cvtColor(self._held.to_host(item), cv2.COLOR_YUV2BGR_NV12, dst=image)

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FPS:
            return self._fps
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return self._frames
        return 0.0

    def release(self) -> None:
        self._open = False
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            return  # still inside the library: its decoder and context stay rather than go under it
        self._decoder = None  # the decoder goes before the context it was given
        self._release_context()

    def _release_context(self) -> None:
        if self._context is not None:
            self._context.release()
            self._context = None


def decoder_context(gpu_id: int, wait: str | None) -> PrimaryContext | None:
    """GPU `gpu_id`'s primary context retained with `wait` ("block"/"spin") for a decoder, or None (the
    library retains that context itself, with CUDA's default wait) when `wait` is None or the driver
    refuses, which is logged: the decoder then works as before."""
    if wait is None:
        return None
    try:
        context = retain_primary_context(gpu_id, wait)
    except NoCudaDriver as exc:
        log.warning("NVDEC keeps CUDA's default GPU wait: %s", exc)
        return None
    if context.wait != wait:
        log.info(
            "NVDEC: GPU %d's context waits %s, not %s (set before this decoder)", gpu_id, context.wait, wait
        )
    return context


def create_decoder(
    nvc: Any, gpu_id: int, codec: Any, context: PrimaryContext | None, *, device_memory: bool, color: Any
) -> Any:
    """PyNvVideoCodec's decoder on `context` (`cudacontext=`, 2.x) or, given None or a library that does
    not take it, on the context it picks itself."""
    args = {"gpuid": gpu_id, "codec": codec, "usedevicememory": device_memory, "outputColorType": color}
    if context is not None:
        try:
            return nvc.CreateDecoder(**args, cudacontext=context.handle)
        except TypeError as exc:  # the binding's overloads do not take cudacontext=
            log.info("NVDEC decoder made without cudacontext= (%s)", exc)
    return nvc.CreateDecoder(**args)


def _container_facts(spec: SourceSpec) -> tuple[float, float]:
    """(fps, frame count) as the container declares them, read by OpenCV's FFmpeg probe (no decoding):
    a file's count and rate stay what the FFmpeg path reports."""
    if spec.kind != "file":
        return 0.0, 0.0
    probe = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG)
    try:
        return float(probe.get(cv2.CAP_PROP_FPS) or 0.0), float(probe.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
    finally:
        probe.release()
