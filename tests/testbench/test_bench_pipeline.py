"""testbench/bench_pipeline.py: the guided detector composite, the frame log, and one real end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from app.pipeline.messages import FrameMeta, StageStamp
from testbench import bench_pipeline as bench

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"


def run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def blob() -> np.ndarray:
    return np.random.default_rng(0).uniform(-120, 120, (2, 3, 320, 320)).astype(np.float32)


def heavy_copy(tmp_path: Path, poison: bool) -> Path:
    """The default detector as a stand-in 'heavy' model; `poison` makes its loc outputs infinite."""
    model = onnx.load(str(DETECTOR))
    if poison:
        # The bias of every loc head conv (bbox_head.*) is set to inf: the heavy loc outputs become inf.
        heads = {n.input[2] for n in model.graph.node if n.op_type == "Conv" and "bbox_head" in n.name}
        assert len(heads) == 3
        for init in model.graph.initializer:
            if init.name in heads:
                init.CopyFrom(
                    numpy_helper.from_array(np.full(_dims(model, init.name), np.inf, np.float32), init.name)
                )
    path = tmp_path / ("poisoned.onnx" if poison else "heavy.onnx")
    onnx.save(model, str(path))
    return path


def _dims(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    return next(tuple(i.dims) for i in model.graph.initializer if i.name == name)


def test_guided_detector_outputs_the_guides_detections_exactly(tmp_path, blob):
    composite = bench.guided_detector(heavy_copy(tmp_path, poison=False), DETECTOR, tmp_path / "guided.onnx")
    model = onnx.load(str(composite))
    guide = onnx.load(str(DETECTOR))
    assert [o.name for o in model.graph.output] == [o.name for o in guide.graph.output]
    assert [i.name for i in model.graph.input] == ["input"]
    assert len(model.graph.node) == 2 * len(guide.graph.node) + 3 * 3  # both graphs and the ties
    for got, want in zip(run_onnx(composite, blob), run_onnx(DETECTOR, blob), strict=True):
        np.testing.assert_array_equal(got, want)


def test_guided_detector_really_computes_the_heavy_graph(tmp_path, blob):
    composite = bench.guided_detector(heavy_copy(tmp_path, poison=True), DETECTOR, tmp_path / "guided.onnx")
    loc, conf, landmarks = run_onnx(composite, blob)
    # inf * 0 is NaN: the heavy loc reached the output, so no runtime may prune the heavy graph.
    assert np.isnan(loc).all()
    assert np.isfinite(conf).all() and np.isfinite(landmarks).all()


def test_guided_detector_runs_on_the_torch_backend(tmp_path, blob):
    pytest.importorskip("torch", reason="the torch backend is the optional 'torch' extra")
    from app.inference.torch_backend import TorchModel

    composite = bench.guided_detector(heavy_copy(tmp_path, poison=False), DETECTOR, tmp_path / "guided.onnx")
    got = TorchModel(composite, device="cpu").run(blob)
    for g, w in zip(got, run_onnx(DETECTOR, blob), strict=True):
        np.testing.assert_allclose(g, w, atol=2e-3 * np.abs(w).max())


def test_random_weights_are_recognised_by_their_metadata(tmp_path):
    plain = heavy_copy(tmp_path, poison=False)
    assert not bench.is_random_weights(plain)
    model = onnx.load(str(plain))
    entry = model.metadata_props.add()
    entry.key, entry.value = bench.RANDOM_WEIGHTS_KEY, "true"
    marked = tmp_path / "marked.onnx"
    onnx.save(model, str(marked))
    assert bench.is_random_weights(marked)


def _meta(index: int, detect: tuple[float, float], done: float) -> FrameMeta:
    stamps = [StageStamp("capture", 0.0, 0.0), StageStamp("detect", *detect), StageStamp("gui", done, done)]
    return FrameMeta(0, index + 1, index, 0.0, 8, 8, stamps)


def test_frame_log_counts_detect_calls_and_steady_fps():
    added = []
    frame_log = bench._FrameLog(added.append)
    # 100 frames, 4 per detect call, finishing every 10 ms after a slow first second.
    for i in range(100):
        call = i // 4
        frame_log(_meta(i, (call * 0.04, call * 0.04 + 0.01), 1.0 + i * 0.01))
    assert len(added) == 100
    assert frame_log.detect_batches() == {"calls": 25, "mean": 4.0, "max": 4, "sizes": {"4": 25}}
    assert frame_log.steady_fps() == pytest.approx(100.0)


def test_frame_log_counts_drops_in_the_steady_part_and_times_them():
    frame_log = bench._FrameLog(lambda meta: None)
    # Two live streams read every 10 ms; stream 0 loses frames 3-6 at the start and 50-51 mid-run.
    for stream in (0, 1):
        for i in range(100):
            if stream == 0 and (3 <= i <= 6 or i in (50, 51)):
                continue
            read = i * 0.01
            stamps = [StageStamp("capture", read, read + 0.001),
                      StageStamp("detect", read + 0.002, read + 0.004),
                      StageStamp("gui", read + 0.005, read + 0.006)]  # fmt: skip
            frame_log(FrameMeta(0, i + 1, i, read, 8, 8, stamps, stream=stream))
    assert frame_log.dropped_steady() == 2  # the start-up loss is outside the middle 80 %
    timeline = frame_log.timeline(bucket_s=0.5)
    assert [row["t_s"] for row in timeline] == [0.0, 0.5]
    assert [row["lost"] for row in timeline] == [4, 2]
    assert [row["frames"] for row in timeline] == [96, 98]
    first = timeline[0]
    assert first["e2e_max_ms"] == pytest.approx(5.0)
    assert first["stage_max_ms"]["detect"] == pytest.approx(2.0)
    assert first["wait_max_ms"]["detect"] == pytest.approx(1.0)
    assert [row["slow"] for row in timeline] == [0, 0]
    startup = frame_log.timeline(bucket_s=0.1, steps_at_most=2)
    assert [row["t_s"] for row in startup] == [0.0, 0.1]
    assert [row["frames"] for row in startup] == [16, 20]  # stream 0 lost 3-6 in the first step


def test_frame_log_timeline_counts_frames_over_the_latency_target():
    frame_log = bench._FrameLog(lambda meta: None)
    for i in range(10):  # every third frame takes 50 ms from read to sink, the rest 10 ms
        read, took = i * 0.01, 0.05 if i % 3 == 0 else 0.01
        stamps = [StageStamp("capture", read, read), StageStamp("gui", read + took, read + took)]
        frame_log(FrameMeta(0, i + 1, i, read, 8, 8, stamps))
    (row,) = frame_log.timeline(bucket_s=1.0)
    assert row["slow"] == 4 and row["e2e_max_ms"] == pytest.approx(50.0)


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    code = bench.main(["--detector", str(tmp_path / "nope.onnx"), "--work", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: model file {tmp_path / 'nope.onnx'} does not exist; check --detector/--embedder"]


@pytest.mark.slow
def test_end_to_end_run_on_the_cpu_prints_one_json_line(tmp_path, capsys):
    out = tmp_path / "result.json"
    argv = ["--backend", "onnxruntime", "--resolution", "720p", "--frames", "24", "--work", str(tmp_path),
            "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert json.loads(out.read_text()) == result
    assert result["frames"] == 24 and result["dropped"] == 0 and result["resolution"] == "1280x720"
    assert result["fps"] > 0 and result["model_only_fps"] > 0 and result["backend"] == "onnxruntime"
    stages = {"capture", "detect", "postprocess", "recognize", "gui", "end_to_end"}
    assert set(result["latency_ms"]) == stages
    assert all(v["p50"] is not None and v["p95"] >= v["p50"] for v in result["latency_ms"].values())
    assert result["models"]["detector"] == "retinaface_mnet025.onnx"
    assert 1 <= result["det_batch"]["mean"] <= 4 and result["det_batch"]["calls"] >= 6
    assert result["recognition"]["faces_embedded"] > 0 and result["faces_per_frame"] > 0
    assert result["model_only"]["detector_per_s_b1"] > 0 and result["model_only"]["embedder_per_s_b1"] > 0
    # Every stage process's CPU per frame, the model's part apart (capture: the decoder's read).
    cpu = result["stage_cpu_ms_per_frame"]
    assert set(cpu) == {"capture", "detect", "postprocess", "recognize", "embed", "gui"}
    assert cpu["detect"]["items"] == 24 and cpu["capture"]["items"] == 24
    assert all(v["cpu"] >= v["model"] >= 0 and v["outside_model"] >= 0 for v in cpu.values())
    assert cpu["detect"]["model"] > 0 and cpu["capture"]["model"] > 0 and cpu["recognize"]["model"] == 0
    # The inputs it made stay for the next run: the clip with its ground truth and an enrolled gallery.
    assert list(tmp_path.glob("demo720-*s.mp4")) and list(tmp_path.glob("gallery-auto-*/enrolled.json"))
