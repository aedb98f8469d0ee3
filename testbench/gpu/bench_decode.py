"""Decode-only throughput of N cameras at once: what each way of decoding costs the host's CPU per frame.

Capture is the pipeline's largest CPU cost on the H200 host (about 11 ms a 1080p H.264 frame with FFmpeg),
so this measures the decoders the capture stage could use, without the rest of the pipeline: N processes
(spawned, like capture processes) each decode the same clip into one BGR frame buffer (as into a ring slot)
and report their frames, CPU time and wall time.

Modes:
- `ffmpeg`: OpenCV/FFmpeg as the capture stage opens files (`sources.open_video`), FFmpeg's own threads.
- `ffmpeg-tK`: the same with K decoding threads (`DECODE_THREADS=K`).
- `nvdec`: the capture stage's `NvdecCapture` (PyNvVideoCodec, interleaved RGB in host memory, swapped).
- `nvdec-nv12`: NVDEC's own NV12 surface copied to host memory, converted by OpenCV into the buffer.
- `nvdec-device`: RGB kept on the GPU, channels swapped there by torch, one copy into a page-locked host
  buffer, then into the frame buffer.

    python testbench/gpu/bench_decode.py --clip CLIP.mp4 --streams 16 --frames 300 --modes ffmpeg ffmpeg-t1

One JSON line per mode (`mode`, `streams`, `fps` in all, `cpu_ms_per_frame`, `wall_s`, `error` when the mode
could not run), and a last line with every mode.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _ffmpeg_frames(clip: str, threads: int, out: np.ndarray, frames: int) -> int:
    from app.stages.sources import open_video, parse_source

    cap = open_video(parse_source(clip), threads=threads)
    done = 0
    while done < frames:
        ok, got = cap.read(out)
        if not ok:
            break
        done += 1
    cap.release()
    return done


def _nvdec_frames(clip: str, out: np.ndarray, frames: int) -> int:
    from app.stages.nvdec import NvdecCapture
    from app.stages.sources import parse_source

    cap = NvdecCapture(parse_source(clip))
    done = 0
    while done < frames:
        ok, frame = cap.read()
        if not ok:
            break
        out[...] = frame
        done += 1
    cap.release()
    return done


def _nvdec_raw_frames(clip: str, out: np.ndarray, frames: int, device: bool) -> int:
    import cv2

    from app.stages.nvdec import import_nvc

    nvc = import_nvc()
    demuxer = nvc.CreateDemuxer(filename=clip)
    h, w = int(demuxer.Height()), int(demuxer.Width())
    decoder = nvc.CreateDecoder(
        gpuid=0,
        codec=demuxer.GetNvCodecId(),
        usedevicememory=device,
        outputColorType=nvc.OutputColorType.RGB if device else nvc.OutputColorType.NATIVE,
    )
    pinned = None
    if device:
        import torch

        pinned = torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=True)
        swap = torch.tensor([2, 1, 0], device="cuda")
    done = 0
    for packet in demuxer:
        for frame in decoder.Decode(packet):
            if device:
                rgb = torch.from_dlpack(frame)
                pinned.copy_(rgb.reshape(h, w, 3).index_select(2, swap))
                out[...] = pinned.numpy()
            else:
                size = h * w * 3 // 2
                pointer = ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
                nv12 = np.ctypeslib.as_array(pointer, shape=(size,)).reshape(h * 3 // 2, w)
                cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12, dst=out)
            done += 1
            if done >= frames:
                return done
    return done


def _worker(mode: str, clip: str, frames: int, shape: tuple[int, int], start: Any, results: Any) -> None:
    out = np.zeros((*shape, 3), np.uint8)
    start.wait()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        if mode == "ffmpeg":
            done = _ffmpeg_frames(clip, 0, out, frames)
        elif mode.startswith("ffmpeg-t"):
            done = _ffmpeg_frames(clip, int(mode.removeprefix("ffmpeg-t")), out, frames)
        elif mode == "nvdec":
            done = _nvdec_frames(clip, out, frames)
        elif mode in ("nvdec-nv12", "nvdec-device"):
            done = _nvdec_raw_frames(clip, out, frames, device=mode == "nvdec-device")
        else:
            raise ValueError(f"unknown mode {mode}")
    except Exception as exc:  # noqa: BLE001 - reported in the JSON line, the other modes go on
        results.put({"error": f"{type(exc).__name__}: {exc}"[:300]})
        return
    results.put({"frames": done, "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0})


def run_mode(mode: str, clip: str, streams: int, frames: int, shape: tuple[int, int]) -> dict[str, Any]:
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
    got = [results.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - wall0
    for p in procs:
        p.join(timeout=30)
    errors = [g["error"] for g in got if "error" in g]
    line: dict[str, Any] = {"mode": mode, "streams": streams}
    if errors:
        line["error"] = errors[0]
        return line
    total = sum(g["frames"] for g in got)
    line.update(
        fps=round(total / wall, 1),
        fps_per_stream_min=round(min(g["frames"] / g["wall_s"] for g in got), 1),
        cpu_ms_per_frame=round(1000 * sum(g["cpu_s"] for g in got) / total, 2),
        frames=total,
        wall_s=round(wall, 2),
    )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True, type=Path)
    parser.add_argument("--streams", type=int, nargs="+", default=[16])
    parser.add_argument("--frames", type=int, default=300, help="frames each stream decodes")
    parser.add_argument("--modes", nargs="+", default=["ffmpeg", "ffmpeg-t1", "ffmpeg-t2", "nvdec"])
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
            line = run_mode(mode, str(args.clip), streams, args.frames, shape)
            print(json.dumps(line), flush=True)
            lines.append(line)
    print(json.dumps({"clip": args.clip.name, "resolution": f"{shape[1]}x{shape[0]}", "runs": lines}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
