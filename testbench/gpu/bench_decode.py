"""Decode-only throughput of N cameras at once: what each way of decoding costs the host's CPU per frame.

Capture is the pipeline's largest CPU cost on the H200 host (about 11 ms a 1080p H.264 frame with FFmpeg),
so this measures the decoders the capture stage could use, without the rest of the pipeline: N processes
(spawned, like capture processes) each decode the same clip into one BGR frame buffer (as into a ring slot)
and report their frames, CPU time and wall time.

Modes:
- `ffmpeg`: OpenCV/FFmpeg as the capture stage opens files (`sources.open_video`), FFmpeg's own threads.
- `ffmpeg-tK`: the same with K decoding threads (`DECODE_THREADS=K`).
- `nvdec`: the capture stage's `NvdecCapture` as shipped (NV12 to host on a decoding thread, converted by
  OpenCV on `nvdec.CONVERT_THREADS` threads; its GPU wait `nvdec.DECODER_WAIT`).
- `nvdec-nv12`: NVDEC's own NV12 surface copied to host memory, converted by OpenCV into the buffer; the
  decoder on the context the library picks (the primary context, CUDA's default wait: spinning).
- `nvdec-nv12-block`: the same on the primary context retained with blocking sync (`cudacontext=`).
- `...-cv1` (after `nvdec-nv12` or `nvdec-nv12-block`): OpenCV on one thread (`cv2.setNumThreads(1)`),
  so the conversion wakes no thread pool.
- `nvdec-device`: RGB kept on the GPU, channels swapped there by torch, one copy into a page-locked host
  buffer, then into the frame buffer.
- `nvdec-nv12-copy` (blocking context, OpenCV on one thread): NVDEC's NV12 surface in host memory copied
  as it is into an NV12 frame buffer (H*3/2 x W), no conversion: what capture costs when the ring holds NV12
  and the GPU detector converts.
- `nvdec-device-nv12` (blocking context): NV12 left in device memory, one torch copy into a page-locked
  host NV12 buffer (as into a ring slot registered for CUDA): no host-side copy by the library or by us.

    python testbench/gpu/bench_decode.py --clip CLIP.mp4 --streams 16 --frames 300 --modes ffmpeg ffmpeg-t1

One JSON line per mode (`mode`, `streams`, `fps` in all, `fps_steady` the streams' rates after their first
frame added up, `cpu_ms_per_frame` from the start to the last frame, `cpu_ms_per_frame_steady` after each
stream's first frame, `open_cpu_ms` per stream up to its first frame, `wall_s`, `wait` the GPU wait the
driver reports for NVDEC's context, `error` when the mode could not run), and a last line with every mode.
Imports happen before the clock starts.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import queue
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class Marks:
    """CPU and wall time when a stream's first frame is out: what opening cost, apart from the steady rate."""

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None
        self.wait = ""

    def frame(self) -> None:
        if self.first is None:
            self.first = (time.process_time(), time.perf_counter())


def _prepare(mode: str) -> None:
    """Import what the mode uses before the clock starts (each process imports it once, as capture does)."""
    import cv2

    from app.stages import nvdec, sources  # noqa: F401 - imported for their import cost

    if mode.startswith("nvdec"):
        nvdec.import_nvc()
    if mode.endswith("-cv1"):
        cv2.setNumThreads(1)
    if mode in ("nvdec-device", "nvdec-device-nv12"):
        import torch  # noqa: F401
    if mode in ("nvdec-nv12-copy", "nvdec-device-nv12"):
        cv2.setNumThreads(1)


def _ffmpeg_frames(clip: str, threads: int, out: np.ndarray, frames: int, marks: Marks) -> int:
    from app.stages.sources import open_video, parse_source

    cap = open_video(parse_source(clip), threads=threads)
    done = 0
    while done < frames:
        ok, got = cap.read(out)
        if not ok:
            break
        done += 1
        marks.frame()
    cap.release()
    return done


def _nvdec_frames(clip: str, out: np.ndarray, frames: int, marks: Marks) -> int:
    from app.stages import nvdec
    from app.stages.sources import parse_source

    cap = nvdec.NvdecCapture(parse_source(clip))
    marks.wait = cap.gpu_wait
    done = 0
    while done < frames:
        ok, frame = cap.read(out)
        if not ok:
            break
        done += 1
        marks.frame()
    cap.release()
    return done


def _nvdec_raw_frames(clip: str, out: np.ndarray, frames: int, mode: str, marks: Marks) -> int:
    import cv2

    from app.stages.nvdec import create_decoder, decoder_context, import_nvc

    device = mode in ("nvdec-device", "nvdec-device-nv12")
    raw = mode in ("nvdec-nv12-copy", "nvdec-device-nv12")  # NV12 kept as it is, not converted
    nvc = import_nvc()
    block = "-block" in mode or raw
    context = decoder_context(0, "block") if block else None
    marks.wait = context.wait if context is not None else "library's"
    demuxer = nvc.CreateDemuxer(filename=clip)
    h, w = int(demuxer.Height()), int(demuxer.Width())
    decoder = create_decoder(
        nvc,
        0,
        demuxer.GetNvCodecId(),
        context,
        device_memory=device,
        color=nvc.OutputColorType.RGB if device and not raw else nvc.OutputColorType.NATIVE,
    )
    size = h * w * 3 // 2
    nv12_out = out.reshape(-1)[:size].reshape(h * 3 // 2, w)  # the frame buffer seen as NV12 planes
    pinned: Any = None
    if device:
        import torch

        shape = (h * 3 // 2, w) if raw else (h, w, 3)
        pinned = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        swap = torch.tensor([2, 1, 0], device="cuda")
    done = 0
    try:
        for packet in demuxer:
            for frame in decoder.Decode(packet):
                if device and raw:
                    pinned.copy_(torch.from_dlpack(frame).reshape(h * 3 // 2, w))
                elif device:
                    rgb = torch.from_dlpack(frame)
                    pinned.copy_(rgb.reshape(h, w, 3).index_select(2, swap))
                    out[...] = pinned.numpy()
                else:
                    pointer = ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
                    nv12 = np.ctypeslib.as_array(pointer, shape=(size,)).reshape(h * 3 // 2, w)
                    if raw:
                        np.copyto(nv12_out, nv12)
                    else:
                        cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12, dst=out)
                done += 1
                marks.frame()
                if done >= frames:
                    return done
        return done
    finally:
        del decoder  # before the context it was given
        if context is not None:
            context.release()


def _frames(mode: str, clip: str, out: np.ndarray, frames: int, marks: Marks) -> int:
    if mode == "ffmpeg":
        return _ffmpeg_frames(clip, 0, out, frames, marks)
    if mode.startswith("ffmpeg-t"):
        return _ffmpeg_frames(clip, int(mode.removeprefix("ffmpeg-t")), out, frames, marks)
    if mode == "nvdec":
        return _nvdec_frames(clip, out, frames, marks)
    if mode in (
        "nvdec-nv12",
        "nvdec-nv12-block",
        "nvdec-nv12-cv1",
        "nvdec-nv12-block-cv1",
        "nvdec-device",
        "nvdec-nv12-copy",
        "nvdec-device-nv12",
    ):
        return _nvdec_raw_frames(clip, out, frames, mode, marks)
    raise ValueError(f"unknown mode {mode}")


def _worker(mode: str, clip: str, frames: int, shape: tuple[int, int], start: Any, results: Any) -> None:
    out = np.zeros((*shape, 3), np.uint8)
    marks = Marks()
    try:
        _prepare(mode)
        start.wait()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = _frames(mode, clip, out, frames, marks)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON line, the other modes go on
        results.put({"error": f"{type(exc).__name__}: {exc}"[:300]})
        return
    cpu, wall = time.process_time(), time.perf_counter()
    first_cpu, first_wall = marks.first or (cpu, wall)
    results.put(
        {
            "frames": done,
            "cpu_s": cpu - cpu0,
            "wall_s": wall - wall0,
            "open_cpu_s": first_cpu - cpu0,
            "steady_cpu_s": cpu - first_cpu,
            "steady_wall_s": wall - first_wall,
            "wait": marks.wait,
        }
    )


def run_mode(
    mode: str, clip: str, streams: int, frames: int, shape: tuple[int, int], timeout_s: float = 600.0
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(mode, clip, frames, shape, start, results)) for _ in range(streams)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every process import and allocate before the clock starts
    wall0 = time.perf_counter()
    start.set()
    line: dict[str, Any] = {"mode": mode, "streams": streams}
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=max(1.0, timeout_s - (time.perf_counter() - wall0))))
    except queue.Empty:
        line["error"] = f"{streams - len(got)} of {streams} streams not done within {timeout_s:g} s"
    wall = time.perf_counter() - wall0
    for p in procs:
        if "error" in line:
            p.kill()  # a stream stuck in the library: the next mode goes on
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    errors = [g["error"] for g in got if "error" in g]
    if errors or "error" in line:
        line.setdefault("error", errors[0] if errors else "")
        return line
    total = sum(g["frames"] for g in got)
    steady = sum(g["frames"] - 1 for g in got if g["frames"] > 1)
    line.update(
        fps=round(total / wall, 1),
        fps_steady=round(
            sum((g["frames"] - 1) / g["steady_wall_s"] for g in got if g["steady_wall_s"] > 0), 1
        ),
        fps_per_stream_min=round(min(g["frames"] / g["wall_s"] for g in got), 1),
        cpu_ms_per_frame=round(1000 * sum(g["cpu_s"] for g in got) / total, 2),
        cpu_ms_per_frame_steady=round(1000 * sum(g["steady_cpu_s"] for g in got) / max(steady, 1), 2),
        open_cpu_ms=round(1000 * sum(g["open_cpu_s"] for g in got) / len(got), 1),
        frames=total,
        wall_s=round(wall, 2),
    )
    waits = sorted({g["wait"] for g in got if g["wait"]})
    if waits:
        line["wait"] = ",".join(waits)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True, type=Path)
    parser.add_argument("--streams", type=int, nargs="+", default=[16])
    parser.add_argument("--frames", type=int, default=300, help="frames each stream decodes")
    parser.add_argument("--modes", nargs="+", default=["ffmpeg", "ffmpeg-t1", "ffmpeg-t2", "nvdec"])
    parser.add_argument("--mode-timeout", type=float, default=600.0, help="seconds a mode may take")
    args = parser.parse_args(argv)
    import cv2

    cap = cv2.VideoCapture(str(args.clip), cv2.CAP_FFMPEG)
    ok, first = cap.read()
    cap.release()
    if not ok:
        print(f"error: cannot decode {args.clip}", file=sys.stderr)
        return 2
    shape = first.shape[:2]
    lines = []
    for streams in args.streams:
        for mode in args.modes:
            line = run_mode(mode, str(args.clip), streams, args.frames, shape, args.mode_timeout)
            print(json.dumps(line), flush=True)
            lines.append(line)
    print(json.dumps({"clip": args.clip.name, "resolution": f"{shape[1]}x{shape[0]}", "runs": lines}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
