"""Cost of painting the multi-camera window: `compose_mosaic` (and the whole `MosaicWindow.render`, legend
included) for N cameras of one frame size, without a display.

    .venv/bin/python testbench/bench_mosaic.py --streams 1 4 9 16 --size 1920x1080

Prints one line per N, then a JSON line last: {"size": ..., "results": [{"streams", "canvas", "compose_ms",
"render_ms"}, ...]} (medians over --repeats paints; every camera's picture is new each paint, as with live
cameras, so nothing is cached).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.stages.window import MosaicWindow  # noqa: E402
from app.vision.mosaic import canvas_size, compose_mosaic  # noqa: E402


class NoDisplay:
    """A window backend that shows nothing: only the painting is timed."""

    def open(self, title: str) -> None: ...
    def resize(self, title: str, width: int, height: int) -> None: ...
    def show(self, title: str, image: np.ndarray) -> None: ...
    def poll_key(self) -> int | None:
        return None

    def is_open(self, title: str) -> bool:
        return True

    def on_click(self, title: str, callback: Callable[[int, int], None]) -> None: ...
    def close(self, title: str) -> None: ...


def median_ms(paint: Callable[[], object], repeats: int) -> float:
    paint()  # first paint allocates the canvas
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        paint()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def measure(streams: int, size: tuple[int, int], repeats: int) -> dict[str, object]:
    width, height = size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(min(streams, 4))]
    tiles = [frames[i % len(frames)] for i in range(streams)]
    names = [f"cam{i + 1}" for i in range(streams)]
    canvas_wh = canvas_size(streams, size)
    out = np.empty((canvas_wh[1], canvas_wh[0], 3), np.uint8)
    compose = median_ms(lambda: compose_mosaic(tiles, names, [None] * streams, canvas_wh, out=out), repeats)
    window = MosaicWindow(names, backend=NoDisplay(), refresh_hz=0)
    for index, tile in enumerate(tiles):
        window.update(index, tile)
    render = median_ms(window.render, repeats)
    return {"streams": streams, "canvas": list(canvas_wh), "compose_ms": compose, "render_ms": render}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 9, 16], help="camera counts")
    parser.add_argument("--size", default="1920x1080", help="every camera's frame size, WxH")
    parser.add_argument("--repeats", type=int, default=30, help="paints timed per camera count")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"error: --size {args.size!r} is not WxH (e.g. 1920x1080)", file=sys.stderr)
        return 2
    if min(args.streams) < 1 or args.repeats < 1 or width < 16 or height < 16:
        print("error: --streams and --repeats must be at least 1, --size at least 16x16", file=sys.stderr)
        return 2
    results = []
    for streams in args.streams:
        result = measure(streams, (width, height), args.repeats)
        print(
            f"{streams:3d} cameras {width}x{height} -> canvas {result['canvas'][0]}x{result['canvas'][1]}: "
            f"compose {result['compose_ms']} ms, render {result['render_ms']} ms",
            file=sys.stderr,
        )
        results.append(result)
    print(json.dumps({"size": [width, height], "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
