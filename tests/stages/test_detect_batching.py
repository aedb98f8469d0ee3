"""Detection batching (several queued frames per model call when behind, none waited for when idle) and the
GPU detection path (torch preprocessing, candidate compaction), run on the CPU with the real RetinaFace."""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading

import cv2
import numpy as np
import pytest

from app.pipeline.messages import EndOfStream, FaceDetections, Ready, Start
from app.pipeline.stage_runner import StageChannels, StageRunner, unpacked
from app.stages.detect import CANDIDATE_FLOOR, CandidateDetections, DetectStage
from app.stages.postprocess import PostprocessStage
from app.vision.retinaface import PRE_NMS_TOP_K, decode_retinaface, prior_boxes
from tests.stages.stage_chain import put_frame, ring_of
from tests.support.onnx_models import fixed_batch_copy
from tests.support.shared_data import HAMILTON, REPO
from tests.support.waiting import GUARD_S

DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
HW = (640, 640)


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """Frames 0 (two small faces), 90 (one large face), 240 (an audience) of the Hamilton clip, at 1280x720
    so the letterbox really resizes (the clip is 640x360)."""
    cap = cv2.VideoCapture(str(HAMILTON))
    frames, index = [], 0
    while len(frames) < 3:
        ok, frame = cap.read()
        assert ok
        if index in (0, 90, 240):
            frames.append(cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_LINEAR))
        index += 1
    cap.release()
    return frames


@pytest.fixture(scope="module")
def torch_mod():
    return pytest.importorskip("torch", reason="the GPU detection path is part of the optional 'torch' extra")


class RecordingDetect(DetectStage):
    """The real stage, recording how many frames each call got."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def process_batch(self, msgs):
        self.calls.append(len(msgs))
        return super().process_batch(msgs)


def start_runner(stage, inbox: queue.Queue, outbox: queue.Queue) -> tuple[threading.Thread, object]:
    supervisor_end, stage_end = multiprocessing.Pipe(duplex=True)
    stop = threading.Event()
    runner = StageRunner(stage, StageChannels(inbox, outbox, stage_end, stop), poll_s=0.01)
    thread = threading.Thread(target=runner.run)
    thread.start()
    assert isinstance(supervisor_end.recv(), Ready)  # setup done (the model is loaded)
    return thread, (supervisor_end, stop)


def test_a_stage_behind_takes_every_queued_frame_in_one_call(clip_frames):
    frames = [clip_frames[i % 3] for i in range(6)]
    with ring_of(frames[0].shape, slots=6) as (ring, handle):
        stage = RecordingDetect(handle, DETECTOR, max_batch=4)
        inbox, outbox = queue.Queue(), queue.Queue()
        thread, (control, stop) = start_runner(stage, inbox, outbox)
        refs = [put_frame(ring, frame, i) for i, frame in enumerate(frames)]
        for ref in refs:  # all queued before the stage starts: it is "behind"
            inbox.put(ref)
        inbox.put(EndOfStream("end of file", len(refs)))
        control.send(Start())
        thread.join(30)
        assert not thread.is_alive()
        out = []
        while not outbox.empty():
            out.extend(unpacked(outbox.get()))
        assert stage.calls == [4, 2]  # bounded by max_batch, then what was left
        raw = out[:-1]
        assert isinstance(out[-1], EndOfStream)
        assert [r.meta.frame_index for r in raw] == list(range(6))
        # Frames of one call share the call's stamp; each frame carries its own outputs.
        detect_stamps = [(r.meta.stamps[-1].start, r.meta.stamps[-1].end) for r in raw]
        assert len(set(detect_stamps[:4])) == 1 and detect_stamps[4] == detect_stamps[5] != detect_stamps[0]
        np.testing.assert_array_equal(raw[0].conf, raw[3].conf)  # frame 3 is frame 0 again
        assert not np.array_equal(raw[0].conf, raw[1].conf)
        stop.set()
        control.close()


class LoggedQueue(queue.Queue):
    """A queue that logs its traffic, in order, into a list shared with others: (name, "get", blocking,
    got a message) and (name, "put")."""

    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name = name
        self.log = log

    def get(self, block: bool = True, timeout: float | None = None):
        try:
            msg = super().get(block, timeout)
        except queue.Empty:
            self.log.append((self.name, "get", block, False))
            raise
        self.log.append((self.name, "get", block, True))
        return msg

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        self.log.append((self.name, "put"))
        super().put(item, block, timeout)


def test_an_idle_stage_runs_each_frame_at_once(clip_frames):
    traffic: list = []
    with ring_of(clip_frames[0].shape, slots=4) as (ring, handle):
        stage = RecordingDetect(handle, DETECTOR, max_batch=4)
        inbox, outbox = LoggedQueue("in", traffic), LoggedQueue("out", traffic)
        thread, (control, stop) = start_runner(stage, inbox, outbox)
        control.send(Start())
        for i in range(3):
            inbox.put(put_frame(ring, clip_frames[i], i))
            out = outbox.get(timeout=GUARD_S)  # answered before the next frame exists
            assert out.meta.frame_index == i
        stop.set()
        thread.join(GUARD_S)
        control.close()
        assert stage.calls == [1, 1, 1]
    # Between taking a frame and answering it the runner only looked for company without blocking: it never
    # waited for a batch to fill, however long that wait would have been.
    answers = [k for k, t in enumerate(traffic) if t == ("out", "put")]
    assert len(answers) == 3, traffic
    for answer in answers:
        taken = max(k for k, t in enumerate(traffic[:answer]) if t[:2] == ("in", "get") and t[3])
        between = [t for t in traffic[taken + 1 : answer] if t[:2] == ("in", "get")]
        assert all(not blocking for _, _, blocking, _ in between), traffic


def test_a_fixed_batch_detector_finds_what_the_dynamic_one_finds(clip_frames, tmp_path):
    """Exported with a batch of 2: the stage's batch shrinks to it, one frame is padded to a full batch."""
    fixed_model = fixed_batch_copy(DETECTOR, 2, tmp_path)
    with ring_of(clip_frames[0].shape, slots=6) as (ring, handle):
        fixed = DetectStage(handle, fixed_model, max_batch=4)
        dynamic = DetectStage(handle, DETECTOR, max_batch=4)
        assert fixed.setup()["max_batch"] == 2 and dynamic.setup()["max_batch"] == 4
        for batch in ([0, 1], [2]):
            got = fixed.process_batch([put_frame(ring, clip_frames[i], i) for i in batch])
            want = dynamic.process_batch([put_frame(ring, clip_frames[i], i + 3) for i in batch])
            for g, w in zip(got, want, strict=True):
                a, b = decode(g), decode(w)
                assert len(a.scores) > 0
                np.testing.assert_array_equal(a.boxes, b.boxes)
                np.testing.assert_array_equal(a.scores, b.scores)
        fixed.close()
        dynamic.close()


def decode(raw, threshold: float = 0.1) -> FaceDetections:
    post = PostprocessStage(threshold, 0.4)
    post.setup()
    return post.process(raw)[0]


def _same_faces(got: CandidateDetections, want: CandidateDetections, score_atol: float) -> None:
    """The same faces decoded from both: faces of near-equal score may swap places, so each is paired with
    its nearest counterpart; boxes within ~1 px at the detector input on 40-130 px faces."""
    a, b = decode(got), decode(want)
    assert len(a.scores) == len(b.scores) > 0
    gap = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(axis=2)
    pair = gap.argmin(axis=1)
    assert sorted(pair) == list(range(len(b.scores)))
    side = (b.boxes[pair, 2:] - b.boxes[pair, :2]).max(axis=1)
    assert (gap.min(axis=1) / side).max() < 0.03
    np.testing.assert_allclose(a.scores, b.scores[pair], atol=score_atol)


def test_gpu_path_on_the_cpu_finds_the_faces_the_cpu_path_finds(clip_frames, torch_mod):
    with ring_of(clip_frames[0].shape, slots=6) as (ring, handle):
        gpu = DetectStage(handle, DETECTOR, backend="torch", device="cpu", max_batch=4)
        cpu = DetectStage(handle, DETECTOR, backend="onnxruntime", max_batch=4)
        info = gpu.setup()
        cpu.setup()
        assert info["device"] == "cpu" and info["max_batch"] == 4 and info["input_hw"] == HW
        got = gpu.process_batch([put_frame(ring, f, i) for i, f in enumerate(clip_frames)])
        want = cpu.process_batch([put_frame(ring, f, i + 3) for i, f in enumerate(clip_frames)])
        priors = prior_boxes(HW).shape[0]
        for g, w in zip(got, want, strict=True):
            assert isinstance(g, CandidateDetections) and isinstance(w, CandidateDetections)
            assert g.priors == priors == w.priors and g.floor == CANDIDATE_FLOOR == w.floor
            # Only the candidates travel: a few hundred rows of 16 floats, not 16800.
            assert 0 < len(g.prior_index) < 2000 and g.loc.shape == (len(g.prior_index), 4)
            assert (g.conf[:, 1] > CANDIDATE_FLOOR).all() and (np.diff(g.prior_index) > 0).all()
            assert g.scale == pytest.approx(w.scale) == pytest.approx(0.5)
            # The GPU letterbox rounds like OpenCV but some pixels differ by one grey level.
            _same_faces(g, w, score_atol=0.02)
        gpu.close()
        cpu.close()


def test_the_whole_gpu_path_is_warmed_for_common_frames_of_both_formats(torch_mod, monkeypatch):
    """warm_path sends every bucket of BGR and NV12 frames through detect (upload, conversion, letterbox,
    model, compaction) before the run; small frames here, on the CPU device."""
    with ring_of((90, 160, 3), slots=2) as (_, handle):
        stage = DetectStage(handle, DETECTOR, backend="torch", device="cpu", max_batch=4)
        stage.setup()
        calls = []
        detect = stage.gpu.detect
        monkeypatch.setattr(
            stage.gpu, "detect", lambda f, k=None: calls.append((len(f), f[0].shape, k)) or detect(f, k)
        )
        stage.gpu.warm_path((90, 160))
        assert calls == []  # not on the CPU device: nothing to load there
        stage.gpu.warm_path((90, 160), force=True)
        buckets = sorted({n for n, _, _ in calls})
        assert buckets == stage.gpu._buckets() and buckets[-1] == 4
        assert {shape for _, shape, _ in calls} == {(90, 160, 3), (135, 160)}
        assert all(k is None or set(k) == {"nv12"} for _, _, k in calls)
        stage.close()


def test_candidates_decode_exactly_like_the_full_outputs(clip_frames, torch_mod):
    from app.inference.torch_backend import TorchModel
    from app.stages.gpu_detect import compact_candidates
    from app.vision.retinaface import letterbox, split_outputs

    torch = torch_mod
    model = TorchModel(DETECTOR, device="cpu")
    blobs = np.stack([letterbox(f, HW)[0] for f in clip_frames])
    loc, conf, lm = split_outputs(model.run_torch(torch.from_numpy(blobs)))
    found = compact_candidates(loc, conf, lm, 0.01, PRE_NMS_TOP_K)
    post = PostprocessStage(0.05, 0.4)  # one stage for all frames: its buffers are reused frame to frame
    post.setup()
    for i, (index, rows) in enumerate(found):
        meta = _meta(i)
        msg = CandidateDetections(
            meta, rows[:, :4], rows[:, 4:6], rows[:, 6:], 0.5, HW, index, len(conf[i]), 0.01
        )
        got = post.process(msg)[0]
        full = decode_retinaface(
            loc[i].numpy(), conf[i].numpy(), lm[i].numpy(), 0.5, HW, 0.05, 0.4, (meta.width, meta.height)
        )
        assert len(got.scores) == len(full) > 0
        np.testing.assert_array_equal(got.boxes, full.boxes)
        np.testing.assert_array_equal(got.landmarks, full.landmarks)
    # A frame with no candidates after busy ones: nothing of the earlier frames may leak through the buffers.
    empty = CandidateDetections(_meta(9), *(np.zeros((0, k), np.float32) for k in (4, 2, 10)), 0.5, HW,
                                np.zeros((0,), np.int64), len(conf[0]), 0.01)  # fmt: skip
    assert len(post.process(empty)[0].scores) == 0


def test_compaction_keeps_the_best_scores_when_everything_passes_the_floor(torch_mod):
    from app.stages.gpu_detect import compact_candidates

    torch = torch_mod
    gen = torch.Generator().manual_seed(0)
    n, p = 2, prior_boxes(HW).shape[0]
    # Random weights look like this: every prior a "face". Distinct scores, so the order after NMS is unique.
    face = torch.stack([torch.randperm(p, generator=gen) for _ in range(n)]).float() / (2 * p) + 0.5
    conf = torch.stack([1 - face, face], dim=2)
    loc = torch.randn((n, p, 4), generator=gen) * 0.1
    lm = torch.randn((n, p, 10), generator=gen) * 0.1
    found = compact_candidates(loc, conf, lm, 0.01, 5000)
    assert [len(index) for index, _ in found] == [5000, 5000]
    for i, (index, rows) in enumerate(found):
        kept = conf[i, index, 1].numpy()
        assert kept.min() >= np.sort(face[i].numpy())[-5000]  # exactly the 5000 best
        np.testing.assert_array_equal(rows[:, 6:], lm[i, index].numpy())
        full = decode_retinaface(loc[i].numpy(), conf[i].numpy(), lm[i].numpy(), 1.0, HW, 0.6, 0.4, HW)
        post = PostprocessStage(0.6, 0.4)
        post.setup()
        msg = CandidateDetections(
            _meta(i, HW), rows[:, :4], rows[:, 4:6], rows[:, 6:], 1.0, HW, index, p, 0.01
        )
        got = post.process(msg)[0]
        np.testing.assert_array_equal(got.boxes, full.boxes)


def test_post_processing_warns_once_when_the_detect_floor_is_above_its_threshold(caplog):
    post = PostprocessStage(0.005, 0.4)
    post.setup()
    p = prior_boxes(HW).shape[0]
    empty = (np.zeros((0, 4), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 10), np.float32))
    with caplog.at_level(logging.WARNING, logger="app.stages.postprocess"):
        for i in range(3):
            post.process(CandidateDetections(_meta(i), *empty, 1.0, HW, np.zeros((0,), np.int64), p, 0.01))
    assert [r.getMessage() for r in caplog.records if "candidates above 0.010" in r.getMessage()] != []
    assert len(caplog.records) == 1


def test_uploader_copies_frames_and_registers_nothing_on_the_cpu(clip_frames, torch_mod):
    from app.stages.gpu_detect import RingUploader

    torch = torch_mod
    up = RingUploader(torch.device("cpu"), max_batch=4)
    block = np.stack(clip_frames)
    assert up.register(block[0], len(block)) is False and not up.zero_copy
    pixels = up.upload(list(block[::-1]))
    assert pixels.shape == (3, 720, 1280, 3) and pixels.dtype == torch.uint8
    np.testing.assert_array_equal(pixels.numpy(), block[::-1])
    up.unregister()


def _meta(i: int, wh: tuple[int, int] = (1280, 720)):
    from app.pipeline.messages import FrameMeta

    return FrameMeta(i, i + 1, i, i / 25, wh[0], wh[1])


def _same_candidates(a: CandidateDetections, b: CandidateDetections) -> None:
    assert np.array_equal(a.prior_index, b.prior_index) and a.scale == b.scale
    for x, y in ((a.loc, b.loc), (a.conf, b.conf), (a.landmarks, b.landmarks)):
        np.testing.assert_array_equal(x, y)


def test_an_nv12_ring_is_detected_as_its_bgr_conversion_on_the_cpu_path(clip_frames):
    from app.vision.pixel_format import NV12, bgr_to_nv12, nv12_to_bgr

    decoded = [nv12_to_bgr(bgr_to_nv12(f)) for f in clip_frames]  # what NVDEC's planes are as BGR
    with (
        ring_of(clip_frames[0].shape, 6, NV12) as (nv12_ring, nv12_handle),
        ring_of(clip_frames[0].shape, 6) as (bgr_ring, bgr_handle),
    ):
        on_nv12 = DetectStage(nv12_handle, DETECTOR, max_batch=4)
        on_bgr = DetectStage(bgr_handle, DETECTOR, max_batch=4)
        on_nv12.setup()
        on_bgr.setup()
        got = on_nv12.process_batch([put_frame(nv12_ring, f, i) for i, f in enumerate(clip_frames)])
        want = on_bgr.process_batch([put_frame(bgr_ring, f, i) for i, f in enumerate(decoded)])
        assert nv12_ring.frame(0).shape == (1080, 1280)  # the slots hold NV12
        assert [len(decode(c).scores) for c in got] == [len(decode(c).scores) for c in want]
        for g, w in zip(got, want, strict=True):
            _same_candidates(g, w)
        on_nv12.close()
        on_bgr.close()


def test_the_gpu_path_uploads_nv12_and_converts_it_there(clip_frames, torch_mod):
    from app.vision.pixel_format import NV12, bgr_to_nv12, nv12_to_bgr

    decoded = [nv12_to_bgr(bgr_to_nv12(f)) for f in clip_frames]
    with (
        ring_of(clip_frames[0].shape, 6, NV12) as (nv12_ring, nv12_handle),
        ring_of(clip_frames[0].shape, 6) as (bgr_ring, bgr_handle),
    ):
        on_nv12 = DetectStage(nv12_handle, DETECTOR, backend="torch", device="cpu", max_batch=4)
        on_bgr = DetectStage(bgr_handle, DETECTOR, backend="torch", device="cpu", max_batch=4)
        on_nv12.setup()
        on_bgr.setup()
        got = on_nv12.process_batch([put_frame(nv12_ring, f, i) for i, f in enumerate(clip_frames)])
        want = on_bgr.process_batch([put_frame(bgr_ring, f, i) for i, f in enumerate(decoded)])
        # The frames crossed as NV12, 1080 rows of 1280 bytes (half the BGR frame's), converted there.
        assert (1080, 1280) in on_nv12.gpu.uploader._device_bufs
        assert (720, 1280, 3) not in on_nv12.gpu.uploader._device_bufs
        assert all(len(decode(c).scores) > 0 for c in got)
        # Resized plane by plane, then converted: within a grey level or two of OpenCV's conversion
        # first, so the same faces at the same places (as the GPU letterbox against OpenCV's).
        for g, w in zip(got, want, strict=True):
            _same_faces(g, w, score_atol=0.03)  # weak faces move most
        on_nv12.close()
        on_bgr.close()


@pytest.mark.slow
def test_compiled_gpu_path_finds_the_candidates_the_plain_one_finds(clip_frames, torch_mod):
    """TORCH_COMPILE: the same graph through inductor (here on the CPU, one frame: one compile) gives the same
    candidate rows as the plain torch path."""
    with ring_of(clip_frames[0].shape, slots=4) as (ring, handle):
        plain = DetectStage(handle, DETECTOR, backend="torch", device="cpu", max_batch=1)
        compiled = DetectStage(
            handle, DETECTOR, backend="torch", device="cpu", max_batch=1, compile_graphs=True
        )
        plain.setup()
        compiled.setup()
        for stage in (plain, compiled):  # both fitted to the camera's frames, as at a run's start
            stage.start({0: None})
        assert plain.input_hw == compiled.input_hw
        assert compiled.gpu.model.compile_mode is not None and plain.gpu.model.compile_mode is None
        want = plain.process_batch([put_frame(ring, clip_frames[1], 0)])[0]
        got = compiled.process_batch([put_frame(ring, clip_frames[1], 1)])[0]
        _same_faces(got, want, score_atol=1e-4)


def test_compiled_batch_sizes_follow_torch_compile_batches(torch_mod):
    """TORCH_COMPILE_BATCHES: `sparse` compiles 1, 4, 16, 32 (a live camera's batch of 5 runs padded to 16),
    `every` each power of two; plain graphs always take every power of two. Nothing is compiled here: the
    buckets decide which graphs a batch replays."""
    from app.inference.torch_backend import pick_bucket
    from app.stages.gpu_detect import TorchDetector

    sparse = TorchDetector(DETECTOR, device="cpu", max_batch=32, compile_graphs=True)
    every = TorchDetector(DETECTOR, device="cpu", max_batch=32, compile_graphs=True, compile_batches="every")
    plain = TorchDetector(DETECTOR, device="cpu", max_batch=32, compile_batches="sparse")
    assert sparse._buckets() == [1, 4, 16, 32]
    assert every._buckets() == plain._buckets() == [1, 2, 4, 8, 16, 32]
    assert pick_bucket(5, sparse.model.buckets) == 16 and pick_bucket(5, every.model.buckets) == 8
