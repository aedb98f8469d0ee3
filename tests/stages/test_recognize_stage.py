"""Recognition stage with the real detector, embedder, tracker, identity voting and an embedded gallery.

These check the stage's wiring, so the gallery holds Lin-Manuel Miranda as he looks in this very shot
(frames 100, 130, 160 and 190 of the clip): his matches are then clear-cut (median similarity 0.64, the
audience at most 0.40). Naming him from his separate portrait with the shipped threshold is the system's
acceptance test (tests/pipeline/test_pipeline_e2e.py).
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import load_settings
from app.gallery import open_gallery
from app.pipeline.messages import TrackedFaces
from app.recognition.analyzer import FaceAnalyzer
from app.stages.detect import DetectStage
from app.stages.postprocess import PostprocessStage
from app.stages.recognize import RecognizeStage, SceneCutDetector
from app.vision.image_io import read_image
from app.vision.pixel_format import bgr_every, bgr_to_nv12, nv12_to_bgr
from tests.stages.stage_chain import put_frame, ring_of, setup_all
from tests.support.shared_data import REPO, SHARED_FACES
from tests.support.shared_data import hamilton_frames as clip

DETECTOR = REPO / "checkpoints" / "retinaface_mnet025.onnx"
LIN = "Lin-Manuel Miranda"


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    """Lin-Manuel Miranda from four frames of his shot in the clip, Alex Lacamoire from his portrait."""
    folder = tmp_path_factory.mktemp("gallery")
    settings = load_settings({"qdrant_path": str(folder)}, env_file=None)
    analyzer = FaceAnalyzer(settings)
    frames = clip(100, 191)
    photos = [(LIN, frames[i - 100]) for i in (100, 130, 160, 190)]
    photos.append(("Alex Lacamoire", read_image(SHARED_FACES / "alex-lacamoire.png")))
    with closing(open_gallery(settings, analyzer.spec)) as gallery:
        for name, image in photos:
            found = analyzer.detect(image)
            assert len(found) == 1
            gallery.add(name, analyzer.embed(image, found.landmarks[:1]))
    return folder


def recognise(
    frames: list[np.ndarray], gallery: Path, pixel_format: str = "bgr", lookahead: int = 0, **overrides
) -> list[TrackedFaces]:
    """The BGR `frames` through detection, post-processing and recognition, on a ring in `pixel_format`
    (with `lookahead`, the frames come out that many later, and the held ones at the end)."""
    settings = load_settings({"qdrant_path": str(gallery), **overrides}, env_file=None)
    out = []
    # A ring of 4 slots, plus the look-ahead's (as the graph gives a file camera's ring).
    with ring_of(frames[0].shape, 4 + lookahead, pixel_format=pixel_format) as (ring, handle):
        recognize = RecognizeStage(handle, settings, lookahead=lookahead)
        stages = [DetectStage(handle, DETECTOR), PostprocessStage(0.1, 0.4), recognize]
        setup_all(stages, {"fps": 29.97, "frame_shape": frames[0].shape})
        detect, post, recog = stages
        try:
            for i, image in enumerate(frames):
                ref = put_frame(ring, image, i)
                [raw] = detect.process(ref)
                [found] = post.process(raw)
                released = recog.process(found)
                assert len(released) == (1 if i >= lookahead else 0)
                out += released
                ring.release(ref.meta.slot, ref.meta.seq)  # (held frames keep only their labels, no pixels)
            out += recog.end_stream(0)
        finally:
            for stage in stages:
                stage.close()
    return out


def test_lin_manuel_is_tracked_and_named(gallery_dir):
    results = recognise(clip(86, 210), gallery_dir)  # one shot of him, large and frontal
    ids = {int(r.track_ids[0]) for r in results if len(r)}
    assert len(ids) == 1, ids  # one face, one track id from start to end
    assert sum(len(r) == 1 for r in results) > 0.95 * len(results)
    results = [r for r in results if len(r) == 1]
    statuses = [r.statuses[0] for r in results]
    named = [r.names[0] == LIN for r in results]
    assert statuses[0] == "pending" and not named[0]  # evidence first
    assert sum(named) / len(named) > 0.8, statuses
    first = named.index(True)
    assert all(named[first:])  # once named, the label holds
    similarity = results[-1].similarities[0]
    assert 0.4 < similarity < 1.0
    box = results[-1].boxes[0]
    assert 60 < box[3] - box[1] < 200 and results[-1].scores[0] > 0.9


def test_look_ahead_names_a_tracks_held_frames_and_changes_nothing_else(gallery_dir):
    frames = clip(86, 130)
    plain, held = recognise(frames, gallery_dir), recognise(frames, gallery_dir, lookahead=8)
    assert [r.meta.frame_index for r in held] == list(range(len(frames)))
    for a, b in zip(plain, held, strict=True):  # the same tracks, boxes and ids; only names filled in
        assert a.track_ids.tolist() == b.track_ids.tolist() and np.array_equal(a.boxes, b.boxes)
    named = [bool(r.names) and r.names[0] == LIN for r in plain]
    first = named.index(True)
    assert first >= 1  # evidence first, without look-ahead
    held_named = [bool(r.names) and r.names[0] == LIN for r in held]
    # The pending frames up to 8 before the first naming now carry it; the frames after are unchanged.
    assert held_named == [i >= max(0, first - 8) for i in range(len(frames))], (first, held_named)
    filled = held[max(0, first - 8)]
    assert filled.statuses == ["known"] and 0.4 < filled.similarities[0] < 1.0


def test_look_ahead_is_off_on_a_ring_too_small_to_hold_its_frames(gallery_dir, caplog):
    settings = load_settings({"qdrant_path": str(gallery_dir)}, env_file=None)
    with ring_of((360, 640, 3), 4) as (_, handle):
        stage = RecognizeStage(handle, settings, lookahead=8)
        setup_all([stage], {"fps": 29.97, "frame_shape": (360, 640, 3)})
        try:
            assert stage.streams[0].lookahead is None
        finally:
            stage.close()
    assert "NAME_LOOKAHEAD 8 needs a ring of more than 10 slots" in caplog.text


def test_strangers_stay_unnamed(gallery_dir):
    results = recognise(clip(225, 275), gallery_dir)  # the audience, nobody enrolled
    assert max(len(r) for r in results) >= 4
    assert all(name is None for r in results for name in r.names)
    assert {s for r in results for s in r.statuses} <= {"pending", "unknown"}


def test_empty_gallery_means_unknown(tmp_path):
    results = recognise(clip(86, 130), tmp_path / "empty")
    assert results[-1].statuses == ["unknown"] and results[-1].names == [None]


def test_frames_without_faces_give_empty_results(gallery_dir):
    black = [np.zeros((360, 640, 3), np.uint8)] * 3
    results = recognise(black, gallery_dir)
    assert [len(r) for r in results] == [0, 0, 0]
    assert results[0].track_ids.dtype == np.int64 and results[0].boxes.shape == (0, 4)


def test_no_track_crosses_a_scene_cut(gallery_dir):
    results = recognise(clip(70, 100), gallery_dir)  # the clip cuts from the audience to Lin-Manuel at 82
    before = {int(i) for r in results[:12] for i in r.track_ids}
    after = {int(i) for r in results[12:] for i in r.track_ids}
    assert before and after
    assert min(after) > max(before)  # new ids after the cut, never reused


def test_scene_cut_detector_tells_cuts_from_motion():
    frames = clip(76, 90)
    detector = SceneCutDetector()
    cuts = [i + 76 for i, image in enumerate(frames) if detector.is_cut(image)]
    assert cuts == [82]
    still = np.full((360, 640, 3), 90, np.uint8)
    moved = np.roll(frames[-1], 12, axis=1)  # a fast pan
    detector = SceneCutDetector()
    assert [detector.is_cut(f) for f in (still, still, frames[-1], moved)] == [False, False, True, False]


def test_the_cut_detectors_sample_is_the_strided_slice_byte_for_byte():
    frame = cv2.resize(clip(100, 101)[0], (1920, 1080))  # a 1080p frame, as a ring slot holds it
    odd = cv2.resize(frame, (1918, 1080))  # not a multiple of the step: the strided copy
    hd = np.ascontiguousarray(frame[:720, :1280])  # 720p: OpenCV's nearest-neighbour resize, as at 1080p
    cases = ((frame, 15), (frame, 1), (frame[:, ::2], 7), (frame[..., 0], 5), (odd, 15), (hd, 10))
    for image, step in cases:  # (a view, one channel)
        sample = bgr_every(image, step)
        assert sample.flags.c_contiguous and np.array_equal(sample, image[::step, ::step])


def test_an_nv12_ring_gives_the_tracks_and_names_of_a_bgr_ring(gallery_dir):
    """The clip across its cut to Lin-Manuel (82) and while he is named, kept as NVDEC would (NV12): the
    same results as a BGR ring of the same decoded pixels (similarities within the chips' rounding: they are
    aligned from converted regions), and the same tracks and names as the clip's own BGR frames."""
    frames = clip(70, 150)
    on_nv12 = recognise(frames, gallery_dir, pixel_format="nv12")
    decoded = recognise([nv12_to_bgr(bgr_to_nv12(f)) for f in frames], gallery_dir)
    original = recognise(frames, gallery_dir)
    assert sum(LIN in r.names for r in on_nv12) > 30  # named on most of his frames
    for a, b in zip(on_nv12, decoded, strict=True):
        assert a.names == b.names and a.statuses == b.statuses
        assert np.array_equal(a.track_ids, b.track_ids) and np.array_equal(a.boxes, b.boxes)
        # (small faces' landmarks, re-found on a crop warped from a converted region, move by < 0.003 px)
        np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-3)
    moved = []
    for a, c in zip(on_nv12, original, strict=True):
        assert a.names == c.names and np.array_equal(a.track_ids, c.track_ids)
        side = np.maximum(c.boxes[:, 2] - c.boxes[:, 0], c.boxes[:, 3] - c.boxes[:, 1])
        moved += list(np.abs(a.boxes - c.boxes).max(axis=1, initial=0.0) / side)
    # Chroma at half resolution moves boxes little: 0.11 of the face at most here (a small audience face).
    assert max(moved) < 0.15 and np.median(moved) < 0.02


def test_small_faces_are_aligned_from_landmarks_found_again(tmp_path):
    """Alex Lacamoire at the piano (frames 0-19, a 32-36 px face) is named from his portrait only when the
    stage re-finds his landmarks on an enlarged crop (`REFINE_BELOW`); Lin-Manuel (~54 px) stays named."""
    settings = load_settings({"qdrant_path": str(tmp_path)}, env_file=None)
    analyzer = FaceAnalyzer(settings)
    with closing(open_gallery(settings, analyzer.spec)) as gallery:
        for name, photo in ((LIN, "lin-manuel-miranda.png"), ("Alex Lacamoire", "alex-lacamoire.png")):
            image = read_image(SHARED_FACES / photo)
            found = analyzer.detect_photo(image)
            gallery.add(name, analyzer.embed_photo(image, found.landmarks[found.largest()][None]))
    frames = clip(0, 20)

    def piano(results: list[TrackedFaces]) -> list[str | None]:
        return [n for r in results for n, b in zip(r.names, r.boxes, strict=True) if b[2] < 160]

    refined = recognise(frames, tmp_path)
    plain = recognise(frames, tmp_path, refine_below=0)
    assert piano(refined).count("Alex Lacamoire") >= 10 and set(piano(refined)) <= {None, "Alex Lacamoire"}
    assert set(piano(plain)) == {None}
    assert all(set(r.names) <= {None, LIN, "Alex Lacamoire"} for r in refined)
    assert sum(LIN in r.names for r in refined) >= 10


def test_refind_missed_continues_a_small_track_the_detector_lost(gallery_dir):
    """An audience face (~40 px) the frame's detector misses on frames 43-44 is found again where its track
    was (REFIND_MISSED): its track goes on there at a capped score, and every other row stays as it was."""
    first = 20  # the shot's first frame: a fresh tracker, as in a whole run
    frames = clip(first, 50)

    def rows(results: list[TrackedFaces]) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
        return {
            (first + r.meta.frame_index, t): (b, s)
            for r in results
            for t, b, s in zip(r.track_ids, r.boxes, r.scores, strict=True)
        }

    plain = rows(recognise(frames, gallery_dir, refind_missed=False))
    refound = rows(recognise(frames, gallery_dir, refind_missed=True))
    extra = refound.keys() - plain.keys()
    assert plain.keys() <= refound.keys() and {f for f, _ in extra} >= {43, 44}, sorted(extra)
    for key in extra:
        box, score = refound[key]
        assert score < 0.4 and box[3] - box[1] < 80  # never starts a track; only small faces
        assert any(t == key[1] for f, t in plain if f < key[0])  # the track it continues was there before
    for key, (box, score) in plain.items():
        assert np.allclose(refound[key][0], box, atol=0.5) and refound[key][1] == pytest.approx(score)
