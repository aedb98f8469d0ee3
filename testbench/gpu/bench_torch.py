"""Torch backend on a GPU: correctness against ONNX Runtime, then model-only throughput. Writes one JSON.

    python -m testbench.gpu.bench_torch --out results.json --faces DIR \\
        --bench-model r50=models/r50.onnx@640:1,8,32 --bench-model r100=models/r100.onnx@112:1,64,256

1. verify: the two default models (RetinaFace mnet0.25, dlib ResNet) through TorchModel in fp32 and fp16
   against ONNX Runtime CPU on real faces: output error, decoded detections (px), embedding cosine; and the
   GPU preprocessing (letterbox, batched warp) against the OpenCV path.
2. bench: images/s of each --bench-model at each batch, fp16, as converted by onnx2torch (eager), after
   shape specialisation (eager), and specialised + CUDA graph; optionally torch.compile (+ graph).
Runs on CPU too (fp32, no graphs) with --quick, to check the script itself before spending device time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from app.inference import torch_convert
from app.inference.torch_backend import TorchModel
from app.vision import gpu_preprocess

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"
FACE_IMAGES = (
    "obama-720p.jpg",
    "two_people.jpg",
    "lin-manuel-miranda.png",
    "alex-lacamoire.png",
    "obama-1080p.jpg",
)


def log(msg: str) -> None:
    print(msg, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: torch.device, iters: int, repeats: int = 5) -> float:
    """Median seconds per call over `repeats` runs of `iters` calls, after warm-up (events on CUDA)."""
    for _ in range(3):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples.append((time.perf_counter() - t0) / iters)
    return statistics.median(samples)


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref.astype(np.float64) - got).max() / max(np.abs(ref).max(), 1e-12))


# -- verification ------------------------------------------------------------------------------------------
def verify(faces: Path, device: torch.device, precisions: list[str]) -> dict:
    import onnxruntime as ort

    from app.inference.spec import embedder_spec_for
    from app.vision.alignment import align_faces, estimate_similarities
    from app.vision.image_io import read_image
    from app.vision.retinaface import decode_retinaface, letterbox, split_outputs

    images = [read_image(faces / name) for name in FACE_IMAGES if (faces / name).is_file()]
    size = 640
    blobs, scales = zip(*(letterbox(img, size) for img in images), strict=True)
    batch = np.stack(blobs)
    det_ort = ort.InferenceSession(str(DETECTOR), providers=["CPUExecutionProvider"])
    ref = det_ort.run(None, {"input": batch})

    def decode_all(outputs: list[np.ndarray]) -> list:
        loc, conf, lm = split_outputs(outputs)
        return [
            decode_retinaface(
                loc[i], conf[i], lm[i], scales[i], (size, size), 0.6, 0.4, images[i].shape[1::-1]
            )
            for i in range(len(images))
        ]

    ref_dets = decode_all(ref)
    spec = embedder_spec_for(EMBEDDER)
    emb_ort = ort.InferenceSession(str(EMBEDDER), providers=["CPUExecutionProvider"])
    chips, owners, landmarks = [], [], []
    for i, (img, det) in enumerate(zip(images, ref_dets, strict=True)):
        if len(det):
            chips.append(align_faces(img, det.landmarks, spec))
            owners += [i] * len(det)
            landmarks.append(det.landmarks)
    chips_np = np.concatenate(chips).astype(np.float32)
    emb_in = ((chips_np - spec.mean) / spec.std).transpose(0, 3, 1, 2).copy()
    emb_ref = emb_ort.run(None, {emb_ort.get_inputs()[0].name: emb_in})[0]
    result: dict = {"images": len(images), "faces": int(len(emb_in))}

    for precision in precisions:
        det = TorchModel(DETECTOR, device=device.type, precision=precision)
        out = det.run(batch)
        dets = decode_all(out)
        box_px, box_rel = [], []
        for a, b in zip(ref_dets, dets, strict=True):
            if len(a) == len(b) and len(a):
                err = np.abs(a.boxes - b.boxes).max(axis=1)
                side = np.maximum(a.boxes[:, 2] - a.boxes[:, 0], a.boxes[:, 3] - a.boxes[:, 1])
                box_px.append(float(err.max()))
                box_rel.append(float((err / side).max()))
        emb = TorchModel(EMBEDDER, device=device.type, precision=precision)
        e = emb.run(emb_in)[0]
        cos = (e * emb_ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(emb_ref, axis=1)
        result[precision] = {
            "detector_rel_err": [rel_err(r, o) for r, o in zip(ref, out, strict=True)],
            "detector_counts_ref": [len(d) for d in ref_dets],
            "detector_counts": [len(d) for d in dets],
            "detector_max_box_px": max(box_px) if box_px else None,
            "detector_box_px_per_image": box_px,
            "detector_max_box_err_over_side": max(box_rel) if box_rel else None,
            "embedder_rel_err": rel_err(emb_ref, e),
            "embedder_min_cosine": float(cos.min()),
            "embedder_max_euclid_diff": float(np.linalg.norm(e - emb_ref, axis=1).max()),
        }
        log(f"verify {precision}: {json.dumps(result[precision])}")

    # GPU preprocessing against the OpenCV path (letterbox, then warp + embed).
    frames = gpu_preprocess.upload_frames(images, device)
    blob_t, scales_t = gpu_preprocess.letterbox_batch(frames, size)
    lb_diff = np.abs(blob_t.cpu().numpy() - batch)
    mats = estimate_similarities(np.concatenate(landmarks), spec.template)
    warped = gpu_preprocess.warp_faces(
        frames, owners, mats, spec.input_size[::-1], spec.channel_order, spec.mean, spec.std
    )
    emb = TorchModel(EMBEDDER, device=device.type, precision="fp32")
    e_gpu = emb.run_torch(warped)[0].cpu().numpy()
    cos = (e_gpu * emb_ref).sum(1) / np.linalg.norm(e_gpu, axis=1) / np.linalg.norm(emb_ref, axis=1)
    result["gpu_preprocess"] = {
        "letterbox_max_abs": float(lb_diff.max()),
        "letterbox_mean_abs": float(lb_diff.mean()),
        "scales_equal": bool(np.allclose(scales_t, scales)),
        "warp_mean_abs_vs_cv2": float(
            np.abs(warped.cpu().numpy() * spec.std[0] - emb_in * spec.std[0]).mean()
        ),
        "warp_embed_min_cosine": float(cos.min()),
        "warp_embed_max_euclid_diff": float(np.linalg.norm(e_gpu - emb_ref, axis=1).max()),
    }
    log(f"verify gpu_preprocess: {json.dumps(result['gpu_preprocess'])}")
    return result


# -- throughput --------------------------------------------------------------------------------------------
def parse_bench_model(spec: str) -> tuple[str, Path, int, list[int], str | None]:
    """'name=path@size:b1,b2[:precision]' -> (name, path, size, [b1, b2], precision or None)."""
    name, rest = spec.split("=", 1)
    path, rest = rest.rsplit("@", 1)
    size, batches, *precision = rest.split(":")
    return name, Path(path), int(size), [int(b) for b in batches.split(",")], (precision or [None])[0]


def bench_model(
    name: str,
    path: Path,
    size: int,
    batches: list[int],
    device: torch.device,
    precision: str,
    variants: list[str],
) -> list[dict]:
    rows = []
    graphs = device.type == "cuda"
    model = TorchModel(path, device=device.type, precision=precision, cuda_graphs=graphs)
    dtype = model.dtype
    raw = model.graph_module  # as converted: shape ops on the device
    for b in batches:
        x = torch.randn((b, 3, size, size), device=device, dtype=dtype)
        if model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        iters = max(3, min(50, int(400 / b))) if device.type == "cuda" else 2
        row: dict = {"model": name, "size": size, "batch": b, "precision": precision}
        with torch.inference_mode():
            if "eager" in variants:
                t = time_call(lambda x=x: raw(x), device, iters)
                row["eager_ms"], row["eager_per_s"] = t * 1e3, b / t
            if "specialised" in variants:
                spec = torch_convert.specialise(raw, x)
                t = time_call(lambda x=x, s=spec: s(x), device, iters)
                row["specialised_ms"], row["specialised_per_s"] = t * 1e3, b / t
            if graphs and "graph" in variants:
                t0 = time.perf_counter()
                model.run_torch(x)  # specialise + capture
                row["capture_s"] = time.perf_counter() - t0
                forward = model._forward  # no output clone: the model alone
                t = time_call(lambda x=x, f=forward: f(x), device, iters)
                row["graph_ms"], row["graph_per_s"] = t * 1e3, b / t
        log(f"bench {json.dumps(row)}")
        rows.append(row)
    model = None  # free its graphs before the next model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_compile(
    name: str, path: Path, size: int, batches: list[int], device: torch.device, mode: str, deadline: float
) -> list[dict]:
    rows = []
    model = TorchModel(path, device=device.type, precision="fp16", compile_mode=mode)
    reference = TorchModel(path, device=device.type, precision="fp16")  # the same graphs, not compiled
    for b in batches:
        if time.monotonic() > deadline:
            log(f"compile {name} batch {b}: skipped, out of time")
            rows.append({"model": name, "batch": b, "skipped": "time"})
            continue
        x = torch.randn((b, 3, size, size), device=device, dtype=torch.float16).contiguous(
            memory_format=torch.channels_last
        )
        row: dict = {"model": name, "size": size, "batch": b, "compile_mode": mode}
        try:
            t0 = time.perf_counter()
            model.run_torch(x)
            row["compile_and_capture_s"] = time.perf_counter() - t0
            forward = model._forward
            with torch.inference_mode():
                t = time_call(lambda x=x, f=forward: f(x), device, max(3, min(50, int(400 / b))))
            row["compiled_graph_ms"], row["compiled_graph_per_s"] = t * 1e3, b / t
            # The compiled graph computes what the uncompiled one does (fp16 rounding apart).
            got, want = model.run_torch(x), reference.run_torch(x)
            row["max_abs_diff"] = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
            row["max_abs_reference"] = max(float(w.abs().max()) for w in want)
        except Exception as exc:  # a compile failure is a result to report, not a reason to lose the run
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log(f"compile {json.dumps(row)}")
        rows.append(row)
    return rows


def bench_upload_letterbox(device: torch.device, faces: Path, batch: int) -> dict:
    import cv2

    frame = cv2.resize(cv2.imread(str(faces / "obama-1080p.jpg")), (1920, 1080))
    frames_np = [frame] * batch
    pinned = [
        torch.from_numpy(f).pin_memory() if device.type == "cuda" else torch.from_numpy(f) for f in frames_np
    ]

    def step() -> None:
        up = [p.to(device, non_blocking=True) for p in pinned]
        gpu_preprocess.letterbox_batch(
            up, 640, dtype=torch.float16 if device.type == "cuda" else torch.float32
        )

    t = time_call(step, device, 5 if device.type == "cuda" else 1)
    return {"frames": batch, "frame": "1920x1080 uint8", "ms": t * 1e3, "frames_per_s": batch / t}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--faces", type=Path, required=True, help="folder with the face images (shared/data/faces)"
    )
    p.add_argument("--bench-model", action="append", default=[], help="name=path@size:b1,b2,...")
    p.add_argument(
        "--compile-model", action="append", default=[], help="name=path@size:b1,... for torch.compile"
    )
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip compile runs after this many seconds")
    p.add_argument("--quick", action="store_true", help="CPU smoke run of the script itself")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="onnx2torch")
    started = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    results: dict = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "onnx2torch": getattr(torch_convert.import_onnx2torch(), "__version__", "?"),
    }
    log(f"env {json.dumps(results)}")

    def save() -> None:
        results["elapsed_s"] = time.monotonic() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    precisions = ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]
    try:
        results["verify"] = verify(args.faces, device, precisions)
    except Exception as exc:
        results["verify_error"] = f"{type(exc).__name__}: {exc}"
        log(f"verify FAILED: {results['verify_error']}")
    save()
    results["bench"] = []
    precision = "fp16" if device.type == "cuda" else "fp32"
    for spec in args.bench_model:
        name, path, size, batches, model_precision = parse_bench_model(spec)
        try:
            results["bench"] += bench_model(
                name,
                path,
                size,
                batches,
                device,
                model_precision or precision,
                ["eager", "specialised", "graph"],
            )
        except Exception as exc:
            results["bench"].append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
            log(f"bench {name} FAILED: {exc}")
        save()
    try:
        results["upload_letterbox"] = bench_upload_letterbox(
            device, args.faces, 32 if device.type == "cuda" else 2
        )
        log(f"upload+letterbox {json.dumps(results['upload_letterbox'])}")
    except Exception as exc:
        results["upload_letterbox"] = {"error": f"{type(exc).__name__}: {exc}"}
    save()
    if device.type == "cuda":
        results["compile"] = []
        deadline = started + args.budget_s
        for spec in args.compile_model:
            name, path, size, batches, _ = parse_bench_model(spec)
            results["compile"] += bench_compile(
                name, path, size, batches, device, args.compile_mode, deadline
            )
            save()
    save()
    log_summary(results)
    return 0


def log_summary(results: dict) -> None:
    log("\nmodel        size batch prec  eager/s  specialised/s  graph/s")
    for r in results.get("bench", []):
        if "error" in r:
            log(f"{r['model']:<12} ERROR {r['error'][:80]}")
            continue
        log(
            f"{r['model']:<12} {r['size']:>4} {r['batch']:>5} {r['precision']:>4} "
            f"{r.get('eager_per_s', 0):>8.0f} {r.get('specialised_per_s', 0):>14.0f} "
            f"{r.get('graph_per_s', 0):>8.0f}"
        )
    for r in results.get("compile", []):
        log(f"compile {r}")


if __name__ == "__main__":
    sys.exit(main())
