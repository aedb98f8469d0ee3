"""The shared embedding worker: one model call for the requests of several streams, each answer to its own
tracking stage; recognition through it names faces as in-process recognition does, a frame later."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import load_settings
from app.gallery import open_gallery
from app.pipeline.frame_ring import StreamRings
from app.pipeline.messages import EmbedRequest, SourceInfo, TrackedFaces
from app.recognition.analyzer import FaceAnalyzer
from app.stages.detect import DetectStage
from app.stages.embed import EmbedStage, FaceEmbedder
from app.stages.postprocess import PostprocessStage
from app.stages.recognize import LANE_BATCH, EmbedChannel, RecognizeStage
from app.vision.alignment import align_faces
from tests.stages.stage_chain import put_frame, ring_of, setup_all
from tests.support.onnx_models import fixed_batch_copy
from tests.support.shared_data import HAMILTON, REPO

DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
EMBEDDER = REPO / "checkpoints" / "dlib_resnet.onnx"
LIN = "Lin-Manuel Miranda"


def clip(start: int, stop: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(HAMILTON))
    frames = [cap.read()[1] for _ in range(stop)]
    cap.release()
    return frames[start:]


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    """Lin-Manuel Miranda from two frames of his shot."""
    folder = tmp_path_factory.mktemp("gallery")
    settings = load_settings({"qdrant_path": str(folder)}, env_file=None)
    analyzer = FaceAnalyzer(settings)
    with closing(open_gallery(settings, analyzer.spec)) as gallery:
        for image in clip(100, 161)[::60]:
            found = analyzer.detect(image)
            gallery.add(LIN, analyzer.embed(image, found.landmarks[:1]))
    return folder


def lin_chips(settings, count: int) -> np.ndarray:
    analyzer = FaceAnalyzer(settings)
    image = clip(150, 151)[0]
    found = analyzer.detect(image)
    return align_faces(image, np.repeat(found.landmarks[:1], count, axis=0), analyzer.spec)


def test_requests_of_two_streams_are_answered_in_one_model_call_each_to_its_own_queue(gallery_dir):
    settings = load_settings({"qdrant_path": str(gallery_dir)}, env_file=None)
    requests: queue.Queue = queue.Queue()
    results = [queue.Queue(), queue.Queue()]
    worker = EmbedStage(settings, requests, results)
    worker.setup()
    try:
        chips = lin_chips(settings, 3)
        requests.put(EmbedRequest(1, 0, 5, [7], [0.9], chips[:1], reply_to=0))
        requests.put(EmbedRequest(1, 3, 9, [2, 4], [0.8, 0.7], chips[1:], reply_to=1))
        worker.serve(timeout=1.0)
        assert worker.batches == 1 and worker.faces == 3  # one call for both streams
        first, second = results[0].get_nowait(), results[1].get_nowait()
        assert (first.stream, first.frame, first.track_ids) == (0, 5, [7])
        assert (second.stream, second.frame, second.track_ids, second.qualities) == (3, 9, [2, 4], [0.8, 0.7])
        assert second.vectors.shape == (2, worker.embedder.spec.dim)
        for answer in (first, second):
            assert not answer.gallery_unavailable
            assert all(matches[0].name == LIN for matches in answer.matches)
        np.testing.assert_allclose(first.vectors[0], second.vectors[0], atol=1e-4)  # the same face
    finally:
        worker.close()


class ArrivingRequests:
    """A requests queue whose requests arrive at given times of a fake clock (seconds): a `get` that waits
    moves the clock on to the next arrival, or by its whole timeout when none comes in it."""

    def __init__(self, arrivals: list[tuple[float, EmbedRequest]]) -> None:
        self.now = 0.0
        self.arrivals = sorted(arrivals, key=lambda a: a[0])

    def clock(self) -> float:
        return self.now

    def get(self, timeout: float) -> EmbedRequest:
        if self.arrivals and self.arrivals[0][0] <= self.now + timeout:
            self.now = max(self.now, self.arrivals[0][0])
            return self.arrivals.pop(0)[1]
        self.now += timeout
        raise queue.Empty

    def get_nowait(self) -> EmbedRequest:
        return self.get(0.0)


@pytest.mark.parametrize(("gather_ms", "first_call_faces"), [(0.0, 1), (5.0, 2)])
def test_the_worker_waits_embed_gather_ms_for_requests_to_batch(gallery_dir, gather_ms, first_call_faces):
    settings = load_settings({"qdrant_path": str(gallery_dir), "embed_gather_ms": gather_ms}, env_file=None)
    chips = lin_chips(settings, 3)
    requests = ArrivingRequests(
        [
            (0.0, EmbedRequest(1, 0, 1, [1], [0.9], chips[:1], reply_to=0)),
            (0.003, EmbedRequest(2, 1, 1, [2], [0.9], chips[1:2], reply_to=0)),  # within 5 ms of the first
            (0.008, EmbedRequest(3, 2, 1, [3], [0.9], chips[2:], reply_to=0)),  # after them
        ]
    )
    results: queue.Queue = queue.Queue()
    worker = EmbedStage(settings, requests, results, clock=requests.clock)
    worker.setup()
    try:
        worker.serve(timeout=1.0)
        assert (worker.batches, worker.faces) == (1, first_call_faces)
        while requests.arrivals:
            worker.serve(timeout=1.0)
        assert (worker.faces, worker.batches) == (3, 4 - first_call_faces)
        assert sorted(results.get_nowait().request for _ in range(3)) == [1, 2, 3]  # each answered once
    finally:
        worker.close()


def recognise(
    frames: list[np.ndarray],
    gallery: Path,
    through_worker: bool,
    result_lag: int = 1,
    serve_delay_s: float = 0.0,
) -> list[TrackedFaces]:
    """Detect, post-process and recognise in this process; with `through_worker`, embeddings come from an
    EmbedStage serving in a thread, as the embedding worker process does (answers `result_lag` frames after
    their request; `serve_delay_s` slows the worker down)."""
    settings = load_settings({"qdrant_path": str(gallery)}, env_file=None)
    requests: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    worker = EmbedStage(settings, requests, [results]) if through_worker else None
    channel = EmbedChannel(requests, results) if through_worker else None
    stop = threading.Event()
    out = []
    with ring_of(frames[0].shape, slots=6) as (ring, handle):
        recognize = RecognizeStage(handle, settings, embed=channel, result_lag=result_lag)
        stages = [DetectStage(handle, DETECTOR), PostprocessStage(0.1, 0.4), recognize]
        setup_all(stages, {"fps": 29.97, "frame_shape": frames[0].shape})
        serving = None
        if worker is not None:
            worker.setup()

            def serve() -> None:
                while not stop.is_set():
                    time.sleep(serve_delay_s)
                    worker.serve(0.02)

            serving = threading.Thread(target=serve)
            serving.start()
        detect, post, _ = stages
        try:
            for i, image in enumerate(frames):
                ref = put_frame(ring, image, i)
                [raw] = detect.process(ref)
                [found] = post.process(raw)
                [tracked] = recognize.process(found)
                out.append(tracked)
                ring.release(ref.meta.slot, ref.meta.seq)
        finally:
            stop.set()
            if serving is not None:
                serving.join(5)
                worker.close()
            for stage in stages:
                stage.close()
    return out


def test_recognition_through_the_worker_names_as_in_process_recognition_does(gallery_dir):
    frames = clip(100, 160)  # Lin-Manuel, large and frontal
    alone = recognise(frames, gallery_dir, through_worker=False)
    shared = recognise(frames, gallery_dir, through_worker=True)
    # The same tracks on every frame (tracking does not depend on when answers come)...
    assert [list(r.track_ids) for r in shared] == [list(r.track_ids) for r in alone]

    def first_named(out: list[TrackedFaces]) -> int:
        return next(i for i, r in enumerate(out) if LIN in r.names)

    # ...and the same name, a frame or two later: an answer is applied on the frame after its request.
    assert 0 <= first_named(shared) - first_named(alone) <= 3
    assert sum(LIN in r.names for r in shared) >= sum(LIN in r.names for r in alone) - 3


def test_a_result_lag_of_several_frames_gives_the_same_tracks_and_names_however_fast_the_worker_is(
    gallery_dir,
):
    frames = clip(100, 160)
    alone = recognise(frames, gallery_dir, through_worker=False)
    fast = recognise(frames, gallery_dir, through_worker=True, result_lag=3)
    slow = recognise(frames, gallery_dir, through_worker=True, result_lag=3, serve_delay_s=0.05)
    # A file's answers are applied on exactly the frame `lag` after their request: timing changes nothing.
    assert [(list(r.track_ids), r.names) for r in fast] == [(list(r.track_ids), r.names) for r in slow]
    assert [list(r.track_ids) for r in fast] == [list(r.track_ids) for r in alone]
    first = next(i for i, r in enumerate(fast) if LIN in r.names)
    assert 0 <= first - next(i for i, r in enumerate(alone) if LIN in r.names) <= 3 + 2


def test_a_lane_tracks_another_streams_frames_while_one_waits_for_its_answer(gallery_dir):
    """Two file streams in one lane, the same frames each. The worker here answers only once two requests
    are queued (or, as a fallback, after a long grace), so a lane that waited for each stream's answer in
    turn would leave it alone with one request every time; `process_batch` tracks the other stream's
    frames meanwhile, and each stream gets what it gets on its own."""
    from contextlib import ExitStack
    from dataclasses import replace

    frames = clip(100, 124)  # Lin-Manuel, large and frontal: he is asked about on most frames
    alone = recognise(frames, gallery_dir, through_worker=True)
    settings = load_settings({"qdrant_path": str(gallery_dir)}, env_file=None)
    requests: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    worker = EmbedStage(settings, requests, [results])
    stop = threading.Event()
    lone: list[int] = []  # serves that found one request only, after the grace

    def serve() -> None:
        while not stop.is_set():
            grace = time.monotonic() + 20.0
            while requests.qsize() < 2 and time.monotonic() < grace and not stop.is_set():
                time.sleep(0.002)
            if requests.qsize() == 1 and not stop.is_set():
                lone.append(1)
            worker.serve(0.01)

    per_batch = 4
    out: dict[int, list[TrackedFaces]] = {0: [], 1: []}
    with ExitStack() as stack:
        (ring0, handle0), (ring1, handle1) = (stack.enter_context(ring_of(frames[0].shape, slots=per_batch))
                                              for _ in range(2))  # fmt: skip
        detect, post = DetectStage(handle0, DETECTOR), PostprocessStage(0.1, 0.4)
        recognize = RecognizeStage(StreamRings({0: handle0, 1: handle1}), settings,
                                   embed=EmbedChannel(requests, results))  # fmt: skip
        for stage in (detect, post, recognize, worker):
            stage.setup()
        shape = frames[0].shape
        info = SourceInfo(frame_shape=shape, fps=29.97, live=False, source="test")
        for stage in (detect, recognize):
            stage.start({0: info} if stage is detect else {0: info, 1: info})
        assert recognize.max_batch == LANE_BATCH  # file cameras: the runner hands it what is queued
        serving = threading.Thread(target=serve)
        serving.start()
        try:
            for start in range(0, len(frames), per_batch):
                batch: dict[int, list] = {0: [], 1: []}
                for i in range(start, min(start + per_batch, len(frames))):
                    ref, twin = put_frame(ring0, frames[i], i), put_frame(ring1, frames[i], i)
                    assert twin.meta.slot == ref.meta.slot
                    [raw] = detect.process(ref)
                    [found] = post.process(raw)
                    batch[0].append(found)
                    batch[1].append(replace(found, meta=replace(found.meta, stream=1, stamps=[])))
                for tracked in recognize.process_batch(batch[0] + batch[1]):
                    out[tracked.meta.stream].append(tracked)
                for found in batch[0] + batch[1]:
                    (ring0 if found.meta.stream == 0 else ring1).release(found.meta.slot, found.meta.seq)
        finally:
            stop.set()
            serving.join(30)
            for stage in (detect, post, recognize, worker):
                stage.close()
    assert worker.batches > 0 and not lone  # every answer went out with the other stream's request
    want = [(list(r.track_ids), r.names) for r in alone]
    for stream in (0, 1):  # the same tracks and names on every frame as the stream alone
        assert [r.meta.frame_index for r in out[stream]] == list(range(len(frames)))
        assert [(list(r.track_ids), r.names) for r in out[stream]] == want
    assert any(LIN in names for _, names in want)


def test_a_lanes_live_streams_are_tracked_in_the_order_their_frames_came(gallery_dir):
    """Live streams never wait for answers: a batch of two cameras' frames, interleaved, comes out in the
    order it went in, with no worker serving at all (no answer is ever waited for)."""
    from contextlib import ExitStack
    from dataclasses import replace

    frames = clip(100, 106)
    settings = load_settings({"qdrant_path": str(gallery_dir)}, env_file=None)
    requests: queue.Queue = queue.Queue()
    with ExitStack() as stack:
        (ring0, handle0), (ring1, handle1) = (stack.enter_context(ring_of(frames[0].shape, slots=len(frames)))
                                              for _ in range(2))  # fmt: skip
        detect, post = DetectStage(handle0, DETECTOR), PostprocessStage(0.1, 0.4)
        recognize = RecognizeStage(StreamRings({0: handle0, 1: handle1}), settings,
                                   embed=EmbedChannel(requests, queue.Queue()))  # fmt: skip
        for stage in (detect, post, recognize):
            stage.setup()
        info = SourceInfo(frame_shape=frames[0].shape, fps=25.0, live=True, source="test")
        detect.start({0: info})
        recognize.start({0: info, 1: info})
        assert recognize.max_batch == 1  # live cameras only: the runner hands it one frame at a time
        batch = []
        for i, image in enumerate(frames):
            ref, _ = put_frame(ring0, image, i), put_frame(ring1, image, i)
            [found] = post.process(detect.process(ref)[0])
            batch += [found, replace(found, meta=replace(found.meta, stream=1, stamps=[]))]
        out = recognize.process_batch(batch)
        for stage in (detect, post, recognize):
            stage.close()
    assert [(r.meta.stream, r.meta.frame_index) for r in out] == [(m.meta.stream, m.meta.frame_index)
                                                                  for m in batch]  # fmt: skip
    assert requests.qsize() > 0 and recognize.given_up == 0  # it asked, and went on without the answers


def test_a_fixed_batch_embedder_embeds_any_number_of_faces_as_the_dynamic_one(gallery_dir, tmp_path):
    fixed_model = fixed_batch_copy(EMBEDDER, 2, tmp_path)
    dynamic = FaceEmbedder(load_settings({"qdrant_path": str(gallery_dir)}, env_file=None))
    fixed_settings = {"qdrant_path": str(tmp_path / "gallery"), "embedder_model": str(fixed_model)}
    fixed = FaceEmbedder(load_settings(fixed_settings, env_file=None))
    dynamic.setup()
    fixed.setup()
    assert fixed.model.inputs[0].fixed_batch == 2 and dynamic.model.inputs[0].fixed_batch is None
    analyzer = FaceAnalyzer(dynamic.settings)
    image = clip(150, 151)[0]
    landmarks = analyzer.detect(image).landmarks[:1]
    # Five different chips (the face shifted a pixel more each), so a row out of place would show.
    chips = align_faces(image, np.concatenate([landmarks + i for i in range(5)]), analyzer.spec)
    for count in (1, 2, 5):
        np.testing.assert_array_equal(fixed.embed(chips[:count]), dynamic.embed(chips[:count]))
    assert fixed.embed(chips[:0]).shape == (0, 128)
    fixed.close()
    dynamic.close()


def test_a_packed_template_gives_the_worker_the_same_query_as_its_parts():
    import pickle

    from app.pipeline.messages import TemplateParts
    from app.recognition.identity import template_with

    rng = np.random.default_rng(3)
    kept = [(float(q), rng.normal(size=128).astype(np.float32)) for q in rng.uniform(0.2, 1.0, 12)]
    new = kept[0][1] + 0.1 * rng.normal(size=128).astype(np.float32)
    packed = pickle.loads(pickle.dumps(TemplateParts.pack(kept)))  # as it crosses the queue
    assert TemplateParts.pack([]) is None
    for threshold in (-1.0, 2.0):  # the new face joins the template / starts a fresh one
        want, joined = template_with(kept, new, 0.7, threshold, "cosine", 0.1)
        got, joined_too = template_with(packed.unpack(), new, 0.7, threshold, "cosine", 0.1)
        assert joined == joined_too and got.dtype == want.dtype and np.array_equal(got, want)


def test_the_worker_keeps_the_unknown_sightings_of_every_lane(gallery_dir, tmp_path, monkeypatch):
    # KEEP_UNKNOWN with several tracking processes: each lane's keepers send their finished sightings, the
    # worker holds the one store and writes them, the last ones (sent as the lanes close) included.
    from app.gallery.unknowns import open_unknowns
    from app.recognition import unknowns
    from app.recognition.unknowns import SightingSender
    from tests.support.unknowns import person_centres, sighting_of

    shutil.copytree(gallery_dir, tmp_path / "g")  # the unknowns live beside the gallery's points
    settings = load_settings({"qdrant_path": str(tmp_path / "g")}, env_file=None)
    sightings: queue.Queue = queue.Queue()
    stage = EmbedStage(settings, queue.Queue(), [queue.Queue()], sightings=sightings, lanes=2)
    stage.setup()
    rng = np.random.default_rng(0)
    lanes = [SightingSender(sightings, lane) for lane in (0, 1)]
    centres = person_centres(3)
    now = time.time()  # (retention prunes what is older than UNKNOWN_RETAIN_DAYS)
    lanes[0].submit([sighting_of(centres[0], 2, now, rng, track=1)])
    lanes[1].submit([sighting_of(centres[1], 2, now + 1, rng, track=2)])
    stage.serve(0.01)  # taken between requests
    lanes[0].close()
    # A lane still closing after the stop:
    lanes[1].submit([sighting_of(centres[2], 2, now + 2, rng, track=3)])
    closer = threading.Thread(target=lambda: (time.sleep(0.2), lanes[1].close()))
    closer.start()
    monkeypatch.setattr(unknowns, "CLOSE_TIMEOUT_S", 60.0)
    stage.close()  # waits for lane 1's LaneDone, not for the timeout
    closer.join()
    assert stage.lanes_done == 2
    with open_unknowns(settings, stage.embedder.spec) as store:
        faces = store.faces()
    assert sorted({f.track for f in faces}) == [1, 2, 3] and len(faces) == 6


def test_the_worker_gives_up_on_a_lane_that_never_closes(gallery_dir, tmp_path, monkeypatch, caplog):
    from app.recognition import unknowns

    shutil.copytree(gallery_dir, tmp_path / "g")  # the unknowns live beside the gallery's points
    settings = load_settings({"qdrant_path": str(tmp_path / "g")}, env_file=None)
    stage = EmbedStage(settings, queue.Queue(), [queue.Queue()], sightings=queue.Queue(), lanes=1)
    stage.setup()
    monkeypatch.setattr(unknowns, "CLOSE_TIMEOUT_S", 0.1)
    with caplog.at_level("WARNING"):
        stage.close()
    assert "1 tracking process(es) ended without their last sightings" in caplog.text
