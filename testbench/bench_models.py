"""CPU latency of the default models and of the per-frame numpy work around them (median of repeats).

    .venv/bin/python testbench/bench_models.py [--threads 2] [--repeats 30]

Measures the detector at det_size (batch 1), the embedder at batch 1 and per face at batch 16, and the
letterbox, RetinaFace decode (+NMS) and alignment steps on a real two-face photo. Prints one line per figure,
then one JSON line last with detector_ms, embed_ms_b1, embed_ms_per_face_b16 (+ the other figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "faces" / "two_people.jpg"


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, help="detector ONNX (default: settings)")
    parser.add_argument("--embedder", type=Path, help="embedder ONNX (default: settings)")
    parser.add_argument("--det-size", type=int, default=640, help="detector input side")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0 = auto)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--image", type=Path, default=DEFAULT_IMAGE, help="photo used for decode/align timing"
    )
    args = parser.parse_args(argv)
    try:
        from app.config import load_settings
        from app.recognition.analyzer import FaceAnalyzer
        from app.vision.alignment import align_faces
        from app.vision.image_io import read_image
        from app.vision.retinaface import decode_retinaface, letterbox, split_outputs

        overrides = {
            "detector_model": args.detector,
            "embedder_model": args.embedder,
            "det_size": args.det_size,
            "threads": args.threads,
        }
        settings = load_settings(overrides)
        analyzer = FaceAnalyzer(settings)
        image = read_image(args.image)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    spec = analyzer.spec
    input_hw = analyzer.preprocessor.input_hw
    r, w = args.repeats, args.warmup
    blob, scale = letterbox(image, input_hw)
    letterbox_ms = median_ms(lambda: letterbox(image, input_hw), r, w)
    batch = blob[None]
    detector_ms = median_ms(lambda: analyzer.detector.run(batch), r, w)
    loc, conf, landms = split_outputs(analyzer.detector.run(batch))
    image_wh = (image.shape[1], image.shape[0])

    def decode():
        return decode_retinaface(
            loc[0],
            conf[0],
            landms[0],
            scale,
            input_hw,
            settings.det_threshold,
            settings.nms_threshold,
            image_wh,
        )

    detections = decode()
    decode_ms = median_ms(decode, max(r, 200), w)
    faces = max(len(detections), 1)
    align_ms = median_ms(lambda: align_faces(image, detections.landmarks, spec), r, w) / faces
    chips = align_faces(image, detections.landmarks, spec)
    if chips.shape[0] == 0:
        chips = np.zeros((1, spec.input_size[1], spec.input_size[0], 3), np.uint8)
    one = spec.preprocess(chips[:1])
    sixteen = spec.preprocess(np.resize(chips, (16, *chips.shape[1:])))
    embed_b1 = median_ms(lambda: analyzer.embedder.run(one), r, w)
    embed_b16 = median_ms(lambda: analyzer.embedder.run(sixteen), r, w) / 16
    preprocess_ms = median_ms(lambda: spec.preprocess(chips), r, w) / chips.shape[0]

    providers = getattr(analyzer.detector, "providers", [])
    threads = settings.threads or "auto"
    print(f"providers {providers}, threads {threads}, image {args.image.name} ({len(detections)} faces)")
    print(f"detector {settings.detector_model.name} at {input_hw[1]}x{input_hw[0]}: {detector_ms:.2f} ms")
    print(f"letterbox {image_wh[0]}x{image_wh[1]} -> {input_hw[1]}x{input_hw[0]}: {letterbox_ms:.2f} ms")
    print(f"decode + NMS: {decode_ms:.3f} ms")
    print(f"align: {align_ms:.3f} ms per face; embedder preprocess: {preprocess_ms:.3f} ms per face")
    name = settings.embedder_model.name
    print(f"embedder {name}: {embed_b1:.2f} ms at batch 1, {embed_b16:.2f} ms per face at batch 16")
    line = {
        "detector_ms": round(detector_ms, 3),
        "embed_ms_b1": round(embed_b1, 3),
        "embed_ms_per_face_b16": round(embed_b16, 3),
        "letterbox_ms": round(letterbox_ms, 3),
        "decode_ms": round(decode_ms, 4),
        "align_ms_per_face": round(align_ms, 4),
        "det_size": input_hw[0],
        "threads": settings.threads,
        "providers": providers,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
