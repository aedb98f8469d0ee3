"""Bad input through the CLIs: one `error: ...` line and exit 2, never a traceback or a hang, or a logged
warning where the run should go on (a truncated video plays what it has).

Cases already covered elsewhere are not repeated here: a missing video file, a bad flag value, an unreachable
RTSP URL with credentials (tests/test_main.py); bad .env values through `load_settings`
(tests/test_config.py); a model that is not ONNX or has a rank-2 input through `load_model`
(tests/inference/test_backend.py); `check_compatible` for an engine of another GPU or TensorRT
(tests/inference/test_tensorrt_backend.py); a text file as an enrollment image and a gallery of another
embedder through `app.enroll` (tests/test_enroll.py); an unreachable Qdrant server at start
(tests/gallery/test_gallery_unavailable.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from app.config import Settings
from app.gallery import open_gallery
from app.inference import engine_cache
from tests.support.shared_data import HAMILTON, SHARED_FACES

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    tmp_path: Path, *argv: str, module: str = "app.main", timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VIDEO_SOURCE", None)
    env_file = (
        [] if "--env-file" in argv or module != "app.main" else ["--env-file", str(tmp_path / "none.env")]
    )
    return subprocess.run(
        [sys.executable, "-m", module, *env_file, *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's only `error:` line, after checking exit 2, no traceback and nothing on stdout."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and result.stdout == "", result.stderr
    return errors[0]


# -- videos and streams --------------------------------------------------------------------------------------


def write_clip(path: Path, frames: int = 100) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
    for i in range(frames):
        image = np.full((240, 320, 3), 40 + i, np.uint8)
        cv2.circle(image, (60 + 2 * i, 120), 30, (0, 0, 255), -1)
        writer.write(image)
    writer.release()
    return path


def mp4_atoms(data: bytes | bytearray, start: int = 0, end: int | None = None):
    """(type, offset, size, header size) of the MP4 boxes in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        yield kind, pos, size, header
        pos += size


def faststart(data: bytes) -> bytes:
    """The MP4 with its index (moov) moved before the media data, as streaming encoders write it; chunk
    offsets shift by the moov size. OpenCV's writer puts moov last, where truncation loses it."""
    top = {kind: (pos, size) for kind, pos, size, _ in mp4_atoms(data)}
    moov_at, moov_size = top[b"moov"]
    mdat_at = top[b"mdat"][0]
    moov = bytearray(data[moov_at : moov_at + moov_size])

    def shift(start: int, end: int) -> None:
        for kind, pos, size, header in mp4_atoms(moov, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                shift(pos + header, pos + size)
            elif kind in (b"stco", b"co64"):
                width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
                count = struct.unpack(">I", moov[pos + 12 : pos + 16])[0]
                for i in range(count):
                    at = pos + 16 + width * i
                    offset = struct.unpack(fmt, moov[at : at + width])[0]
                    moov[at : at + width] = struct.pack(fmt, offset + moov_size)

    shift(8, moov_size)
    return data[:mdat_at] + bytes(moov) + data[mdat_at:moov_at] + data[moov_at + moov_size :]


def test_a_file_that_is_not_a_video(tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("meeting notes, not a video\n")
    assert one_error_line(run_cli(tmp_path, "--source", str(notes), "--no-gui")) == (
        f"error: capture: cannot decode video file {notes}: not a video, or not a format FFmpeg reads"
    )


def test_an_mp4_cut_in_half_before_its_index_is_one_line(tmp_path):
    full = write_clip(tmp_path / "full.mp4").read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(full[: len(full) // 2])  # OpenCV writes the index last: it is gone
    line = one_error_line(run_cli(tmp_path, "--source", str(half), "--no-gui", timeout=60))
    assert (
        line == f"error: capture: cannot decode video file {half}: not a video, or not a format FFmpeg reads"
    )


def test_a_streamable_mp4_cut_in_half_plays_what_it_has_then_ends(tmp_path):
    streamable = faststart(write_clip(tmp_path / "full.mp4").read_bytes())
    half = tmp_path / "half.mp4"
    half.write_bytes(streamable[: len(streamable) // 2])
    tracks = tmp_path / "tracks.jsonl"
    result = run_cli(tmp_path, "--source", str(half), "--no-gui", "--max-speed", "--gallery",
                     str(tmp_path / "empty"), "--tracks-out", str(tracks), timeout=60)  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["stop_reason"] == "end of stream" and 30 < summary["frames"] < 70
    frames = summary["frames"]
    assert f"video file {half} ended after {frames} of the 100 frames it declares: truncated or damaged" in (
        result.stderr
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_http_camera_is_one_line_at_once(tmp_path):
    url = f"http://viewer:pa55word@127.0.0.1:{closed_port()}/video.mjpg"
    # At start a refused camera is the end (no reconnecting): one line, whatever the machine's speed.
    result = run_cli(tmp_path, "--source", url, "--no-gui")
    line = one_error_line(result)
    assert line.startswith("error: capture: cannot open video stream http://***@127.0.0.1:")
    assert "pa55word" not in line and "reconnecting" not in result.stderr


def test_a_webcam_that_does_not_exist(tmp_path):
    assert one_error_line(run_cli(tmp_path, "--source", "7", "--no-gui")) == (
        "error: capture: no webcam at webcam 7 (/dev/video7 cannot be opened); check --source and the camera"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("MATCH_THRESHOLD=abc", "MATCH_THRESHOLD='abc' is not a valid float"),
        ("BACKEND=cuda", "BACKEND='cuda' is not one of: onnxruntime, torch, tensorrt"),
    ],
)
def test_bad_env_file_values(tmp_path, line, message):
    env_file = tmp_path / "bad.env"
    env_file.write_text(f"{line}\n")
    result = run_cli(tmp_path, "--env-file", str(env_file), "--source", str(HAMILTON), "--no-gui")
    assert one_error_line(result).startswith(f"error: {env_file}: {message}")


# -- models --------------------------------------------------------------------------------------------------


def flat_model(path: Path) -> Path:
    """A valid ONNX model whose only input is 1-D."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N"])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "flat", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_a_detector_file_that_is_not_onnx(tmp_path):
    fake = tmp_path / "detector.onnx"
    fake.write_bytes(b"GIF89a not a model" * 10)
    line = one_error_line(run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--detector", str(fake)))
    assert line.startswith(f"error: detect: {fake} is not a loadable ONNX model (")
    assert line.endswith("re-export or re-download it")


@pytest.mark.parametrize(("flag", "stage"), [("--detector", "detect"), ("--embedder-model", "embed")])
def test_a_model_with_a_1d_input(tmp_path, flag, stage):
    model = flat_model(tmp_path / "flat.onnx")
    assert one_error_line(run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", flag, str(model))) == (
        f"error: {stage}: {model} must have one NCHW (rank-4) image input but has: input['N']; "
        "export it with a single (N,3,H,W) input"
    )


def test_an_engine_built_for_another_gpu(tmp_path):
    engine = tmp_path / "det.engine"
    engine.write_bytes(b"\x00" * 64)
    profile = engine_cache.Profile("input", (1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640))
    meta = engine_cache.EngineMetadata("0" * 64, "det.onnx", "8.6.1", "Tesla T4", "fp16", profile, 4096)
    engine_cache.write_metadata(engine, meta)
    result = run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--backend", "tensorrt", "--detector",
                     str(engine))  # fmt: skip
    line = one_error_line(result)
    if importlib.util.find_spec("tensorrt") is None:
        # The engine path imports TensorRT before it can read the sidecar: here that is the first problem.
        assert line.startswith("error: detect: TensorRT is not installed: No module named 'tensorrt'")
    else:
        assert line.startswith(f"error: detect: engine {engine} was built for TensorRT 8.6.1")


# -- enrollment and the gallery ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["empty", "truncated"])
def test_enrollment_images_that_are_empty_or_cut_short(tmp_path, case):
    bad = tmp_path / f"{case}.jpg"
    photo = (SHARED_FACES / "obama-480p.jpg").read_bytes()
    bad.write_bytes(b"" if case == "empty" else photo[: len(photo) // 3])
    gallery = tmp_path / "gallery"
    good = SHARED_FACES / "obama-480p.jpg"
    result = run_cli(
        tmp_path, "--gallery", str(gallery), "add", "obama", str(good), str(bad), module="app.enroll"
    )
    assert one_error_line(result) == (
        f"error: image {bad} is empty or not a readable image (jpg, png, bmp, tiff, webp...); replace it"
    )
    assert not (gallery / "faces").exists() or not any((gallery / "faces").iterdir())  # nothing enrolled


@dataclass(frozen=True)
class OtherEmbedder:
    model_id: str = "arcface-0123456789ab"
    dim: int = 512
    metric: str = "cosine"


def test_the_pipeline_refuses_a_gallery_of_another_embedder(tmp_path):
    gallery = tmp_path / "gallery"
    other = open_gallery(Settings(qdrant_path=gallery), OtherEmbedder())
    other.add("someone", np.random.default_rng(0).normal(size=(2, 512)))
    other.close()
    line = one_error_line(run_cli(tmp_path, "--source", str(HAMILTON), "--no-gui", "--gallery", str(gallery)))
    assert line.startswith(
        f"error: embed: gallery at {gallery / 'faces'} was built with embedder arcface-0123456789ab "
        "(dim 512); this run uses dlib-"
    )
    assert line.endswith("use another FACEPIPE_QDRANT_PATH/FACEPIPE_QDRANT_COLLECTION or re-enroll")
