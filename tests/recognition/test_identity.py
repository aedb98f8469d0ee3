from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from app.gallery.base import Match
from app.inference.spec import normalize_for, rowwise_similarity
from app.recognition import quality
from app.recognition.identity import (
    TrackIdentities,
    TrackLabel,
    template_agrees,
    template_with,
    templates_with,
)
from app.recognition.identity_config import IdentityConfig
from tests.support.shared_data import SHARED_FACES

THRESHOLD = 0.4  # dlib: 1 - distance 0.6


@dataclass
class FakeTrack:
    track_id: int
    box: np.ndarray
    landmarks: np.ndarray | None


def frontal_landmarks(box: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5 + yaw * 0.4, 0.6], [0.35, 0.8], [0.65, 0.8]])
    return (np.array([x1, y1]) + rel * np.array([w, h])).astype(np.float32)


def track(track_id: int, x: float = 100.0, size: float = 120.0, yaw: float = 0.0) -> FakeTrack:
    box = np.array([x, 100.0, x + size * 0.8, 100.0 + size])
    return FakeTrack(track_id, box, frontal_landmarks(box, yaw))


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v) * 0.6).astype(np.float32)  # dlib-like norm


def run(manager, tracks, answer, frame=None):
    """One frame: select, 'embed' with answer(track_id) -> (vector, matches), update."""
    need = manager.select_for_embedding(tracks, frame)
    embeddings, matches = {}, {}
    for track_id in need:
        embeddings[track_id], matches[track_id] = answer(track_id)
    return need, manager.update(tracks, embeddings, matches)


def test_enrolled_face_is_named_after_agreeing_evidence_and_then_embedded_rarely():
    manager = TrackIdentities(IdentityConfig(), threshold=THRESHOLD, metric="euclidean")
    alice = unit(1)
    statuses, embedded_frames = [], []
    for frame in range(300):
        # Above threshold but not by fast_margin: one embedding is not enough evidence.
        need, labels = run(manager, [track(1)], lambda _: (alice, [Match("alice", 0.45), Match("bob", 0.3)]))
        statuses.append(labels[1].status)
        if need:
            embedded_frames.append(frame)
    assert statuses[0] == "pending"
    first_known = statuses.index("known")
    assert 1 <= first_known <= 10
    assert set(statuses[first_known:]) == {"known"}
    assert labels[1] == TrackLabel(1, "alice", pytest.approx(0.45), "known")
    assert manager.counters.embeddings == len(embedded_frames)
    assert len(embedded_frames) * 10 <= 300  # at least 10x fewer embeddings than faces
    assert embedded_frames[0] == 0  # embedded as soon as the track shows up


def test_a_large_frontal_face_well_above_threshold_is_named_on_its_first_embedding():
    manager = TrackIdentities(IdentityConfig(), threshold=THRESHOLD, metric="euclidean")
    _, labels = run(manager, [track(1)], lambda _: (unit(1), [Match("alice", 0.65), Match("bob", 0.3)]))
    assert labels[1] == TrackLabel(1, "alice", pytest.approx(0.65), "known")


def test_a_small_face_above_threshold_by_fast_margin_still_waits_for_a_second_opinion():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    good = THRESHOLD + (config.fast_margin + config.sure_margin) / 2
    _, labels = run(
        manager, [track(1, size=40.0)], lambda _: (unit(1), [Match("alice", good), Match("bob", 0.3)])
    )
    assert labels[1].status == "pending"


def test_a_small_face_matched_far_above_threshold_far_ahead_of_anyone_is_named_on_its_first_embedding():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    sure = THRESHOLD + config.sure_margin + 0.01
    answer = [Match("alice", sure), Match("bob", sure - config.sure_lead - 0.01)]
    _, labels = run(manager, [track(1, size=40.0)], lambda _: (unit(1), answer))
    assert labels[1] == TrackLabel(1, "alice", pytest.approx(sure), "known")


def test_a_small_face_matched_far_above_threshold_but_close_to_another_person_waits():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    sure = THRESHOLD + config.sure_margin + 0.01
    answer = [Match("alice", sure), Match("bob", sure - config.sure_lead / 2)]
    _, labels = run(manager, [track(1, size=40.0)], lambda _: (unit(1), answer))
    assert labels[1].status == "pending"


def test_a_face_overlapping_another_when_its_embedding_arrives_casts_no_vote():
    manager = TrackIdentities(IdentityConfig(), threshold=THRESHOLD, metric="euclidean")
    a, b = track(1, x=100.0), track(2, x=400.0)
    need = manager.select_for_embedding([a, b], None)
    assert need == [1, 2]
    b_now = track(2, x=110.0)  # by the time the vectors arrive the faces cross
    labels = manager.update(
        [a, b_now],
        embeddings={1: unit(1), 2: unit(2)},
        matches={1: [Match("alice", 0.65)], 2: [Match("bob", 0.65)]},
    )
    assert labels[1].status == labels[2].status == "pending"
    assert manager.counters.embeddings == 2


def test_the_query_is_the_tracks_template_and_a_different_face_restarts_it():
    manager = TrackIdentities(IdentityConfig(), threshold=THRESHOLD, metric="euclidean")
    rng = np.random.default_rng(3)
    base = unit(1)
    views = [base + rng.normal(scale=0.02, size=base.size).astype(np.float32) for _ in range(3)]
    t = track(1)
    for view in views[:2]:
        manager.select_for_embedding([t], None)
        manager.update([t], {1: view}, {1: [Match("alice", 0.42)]})
        for _ in range(2):  # frames between embeddings
            manager.select_for_embedding([t], None)
            manager.update([t], {}, {})
    assert manager.select_for_embedding([t], None) == [1]
    query = manager.query_vectors([1], views[2][None])[0]
    # The template averages the views: closer to the person than the newest view alone.
    assert np.linalg.norm(query - base) < np.linalg.norm(views[2] - base)
    stranger = unit(7)
    assert np.allclose(manager.query_vectors([1], stranger[None])[0], stranger)


def test_a_stranger_below_threshold_stays_unknown_not_the_nearest_person():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    for frame in range(100):
        # Nearest enrolled person is always just under the threshold; every 7th frame a fluke above it.
        sim = THRESHOLD + 0.02 if frame % 7 == 0 else THRESHOLD - 0.03
        _, labels = run(manager, [track(5)], lambda _, s=sim: (unit(9), [Match("obama", s)]))
        assert labels[5].name is None
    assert labels[5].status == "unknown"
    assert labels[5].similarity < THRESHOLD
    assert manager.counters.named == 0


def test_empty_gallery_means_unknown():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="cosine")
    for _ in range(30):
        _, labels = run(manager, [track(1)], lambda _: (unit(2), []))
    assert labels[1].status == "unknown" and labels[1].name is None


def test_two_people_equally_close_give_no_name():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    for _ in range(60):
        _, labels = run(
            manager, [track(1)], lambda _: (unit(2), [Match("twin_a", 0.6), Match("twin_b", 0.59)])
        )
    assert labels[1].status == "pending" and labels[1].name is None


def test_label_has_hysteresis_but_recovers_from_a_swap():
    cfg = IdentityConfig(refresh_interval=1, min_embed_gap=0)  # embed every frame to drive the votes
    manager = TrackIdentities(cfg, threshold=THRESHOLD, metric="euclidean")
    alice = lambda _: (unit(1), [Match("alice", 0.7), Match("bob", 0.2)])  # noqa: E731
    bob = lambda _: (unit(2), [Match("bob", 0.7), Match("alice", 0.2)])  # noqa: E731
    for _ in range(10):
        _, labels = run(manager, [track(1)], alice)
    assert labels[1].name == "alice"
    _, labels = run(manager, [track(1)], bob)  # one contrary view: no flip
    assert labels[1].name == "alice"
    names = [run(manager, [track(1)], bob)[1][1].name for _ in range(15)]
    assert names[-1] == "bob"  # consistent contrary evidence wins in the end
    assert names.count("alice") >= 2 and "alice" not in names[names.index("bob") :]
    assert manager.counters.label_changes == 1


def test_a_swapped_track_is_looked_at_again_quickly_and_renamed():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    alice = lambda _: (unit(1), [Match("alice", 0.7), Match("bob", 0.2)])  # noqa: E731
    bob = lambda _: (unit(2), [Match("bob", 0.7), Match("alice", 0.2)])  # noqa: E731
    for _ in range(100):
        _, labels = run(manager, [track(1)], alice)
    assert labels[1].name == "alice"
    embedded_before = manager.counters.embeddings
    names = [run(manager, [track(1)], bob)[1][1].name for _ in range(80)]
    switch = names.index("bob")
    assert switch <= IdentityConfig().refresh_interval + 20  # found at the next refresh, settled quickly
    assert set(names[switch:]) == {"bob"}
    assert manager.counters.embeddings - embedded_before <= 12


def test_label_survives_a_short_occlusion_and_the_face_is_rechecked():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    answer = lambda _: (unit(1), [Match("alice", 0.7)])  # noqa: E731
    for _ in range(20):
        run(manager, [track(1)], answer)
    for _ in range(10):
        assert run(manager, [], answer) == ([], {})
    need, labels = run(manager, [track(1)], answer)
    assert need == [1]  # back after being gone: verify
    assert labels[1].name == "alice"


def test_new_track_is_relinked_to_a_vanished_one_of_the_same_face():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    alice, carol = unit(1), unit(3)
    for _ in range(20):
        run(
            manager,
            [track(1), track(2, x=600)],
            lambda i: (alice, [Match("alice", 0.7)]) if i == 1 else (carol, []),
        )
    assert manager.label(2).status == "unknown"
    for _ in range(60):  # both vanish for longer than a tracker keeps them
        run(manager, [], None)
    # They come back with new ids: the same faces (small noise), no gallery match for alice on this view.
    noisy = lambda v, seed: v + np.random.default_rng(seed).normal(0, 0.01, v.shape).astype(np.float32)  # noqa: E731
    _, labels = run(
        manager,
        [track(7), track(8, x=600)],
        lambda i: (noisy(alice, 1), []) if i == 7 else (noisy(carol, 2), []),
    )
    assert labels[7].status == "known" and labels[7].name == "alice"  # at once, by re-linking
    assert labels[8].status == "unknown"
    assert (labels[7].linked_id, labels[8].linked_id) == (1, 2)  # shown under their old numbers
    assert manager.counters.relinks == 2


def test_different_face_is_not_relinked():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    for _ in range(20):
        run(manager, [track(1)], lambda _: (unit(1), [Match("alice", 0.7)]))
    for _ in range(5):
        run(manager, [], None)
    _, labels = run(manager, [track(2)], lambda _: (unit(4), [Match("alice", 0.3)]))
    assert labels[2].status == "pending" and manager.counters.relinks == 0


def test_faces_are_not_embedded_while_overlapping_and_rechecked_after_the_crossing():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    answer = lambda i: (unit(i), [Match(f"p{i}", 0.7)])  # noqa: E731
    for _ in range(15):
        run(manager, [track(1, x=100), track(2, x=400)], answer)
    assert manager.label(1).name == "p1" and manager.label(2).name == "p2"
    need, _ = run(manager, [track(1, x=240), track(2, x=260)], answer)  # crossing
    assert need == []
    run(manager, [track(1, x=260), track(2, x=240)], answer)
    need, _ = run(manager, [track(1, x=500), track(2, x=50)], answer)  # apart again
    assert sorted(need) == [1, 2]


def test_a_clearly_better_view_is_embedded_early():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    answer = lambda _: (unit(1), [Match("alice", 0.7)])  # noqa: E731
    for _ in range(10):
        run(manager, [track(1, size=40)], answer)
    assert run(manager, [track(1, size=42)], answer)[0] == []  # a bit larger: not worth it
    assert run(manager, [track(1, size=90)], answer)[0] == [1]  # much larger: embed


def test_tiny_faces_and_missing_landmarks_are_not_embedded():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    no_landmarks = FakeTrack(2, np.array([0.0, 0.0, 80.0, 100.0]), None)
    need, labels = run(manager, [track(1, size=10), no_landmarks], None)
    assert need == [] and labels[1].status == "pending" and labels[2].status == "pending"


def test_reset_forgets_everything():
    manager = TrackIdentities(None, threshold=THRESHOLD, metric="euclidean")
    for _ in range(10):
        run(manager, [track(1)], lambda _: (unit(1), [Match("alice", 0.7)]))
    manager.reset()
    assert manager.counters.embeddings == 0 and manager.label(1) is None
    # Just above threshold (no fast naming): one embedding after the reset is not enough.
    _, labels = run(manager, [track(1)], lambda _: (unit(1), [Match("alice", 0.44)]))
    assert labels[1].status == "pending"


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError):
        TrackIdentities(None, threshold=0.4, metric="manhattan")


def test_quality_prefers_large_frontal_faces():
    cfg = IdentityConfig()
    small, large = track(1, size=40), track(2, size=120)
    profile = track(3, size=120, yaw=0.5)
    q = quality.geometric(
        np.stack([t.box for t in (small, large, profile)]),
        np.stack([t.landmarks for t in (small, large, profile)]),
        cfg.reference_face_size,
    )
    assert q[1] > q[0] and q[1] > q[2]
    assert q[1] == pytest.approx(1.0)


def test_sharpness_of_a_real_face_drops_when_blurred():
    image = cv2.imread(str(SHARED_FACES / "obama-480p.jpg"))
    assert image is not None
    box = np.array([392.0, 38.0, 494.0, 186.0])  # RetinaFace mnet0.25's box on this photo
    reference = IdentityConfig().reference_sharpness
    sharp = quality.sharpness_term(image, box, reference)
    slightly = quality.sharpness_term(cv2.GaussianBlur(image, (0, 0), 1.5), box, reference)
    blurred = quality.sharpness_term(cv2.GaussianBlur(image, (0, 0), 3), box, reference)
    assert sharp == pytest.approx(1.0)  # a sharp photo saturates the term
    assert sharp > slightly > blurred
    assert blurred < 0.2
    assert (
        quality.sharpness_term(image, np.array([-50.0, -50.0, -10.0, -10.0]), reference) == 0.0
    )  # off the frame


def test_quality_of_real_landmarks_is_high_for_a_frontal_photo():
    landmarks = np.array([[421, 93], [469, 92], [447, 119], [422, 140], [468, 140]], np.float32)
    q = quality.geometric(
        np.array([[392.0, 38.0, 494.0, 186.0]]), landmarks[None], IdentityConfig().reference_face_size
    )
    assert q[0] > 0.9


def _reference_template_with(kept, vector, quality, threshold, metric, floor):
    """The template formula as the worker computed it one track at a time (the reference for the batch)."""

    def aggregate(parts):
        weights = np.array([max(q, floor) for q, _ in parts])
        vectors = normalize_for(np.stack([v for _, v in parts]), metric)
        return normalize_for((weights[:, None] * vectors).sum(axis=0) / weights.sum(), metric)

    if not kept:
        return vector, True
    if rowwise_similarity(aggregate(kept)[None], vector[None, :], metric)[0] < threshold:
        return vector, False
    return aggregate([*kept, (quality, vector)]), True


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_templates_of_a_batch_are_bit_identical_to_one_track_at_a_time(metric: str) -> None:
    """templates_with (the shared worker's whole batch at once) gives each track exactly the template and
    agreement the one-track formula gives: 1 to 20 kept views (numpy sums 8 or more pairwise), rows without
    a template, new views like and unlike the template."""
    rng = np.random.default_rng(5)
    threshold = 0.4 if metric == "euclidean" else 0.35
    joined = unlike = 0
    for _ in range(300):
        rows = int(rng.integers(1, 7))
        kept, vectors, qualities = [], [], []
        for _ in range(rows):
            centre = unit(int(rng.integers(1000)))
            n = int(rng.integers(0, 21)) if rng.random() < 0.8 else 0
            parts = [
                (float(rng.random()), centre + rng.normal(0, 0.02, 128).astype(np.float32)) for _ in range(n)
            ]
            kept.append(parts)
            scale = 0.02 if rng.random() < 0.6 else 0.2
            vectors.append(centre + rng.normal(0, scale, 128).astype(np.float32))
            qualities.append(float(rng.random()))
        batch = np.stack(vectors)
        packed = [(np.array([q for q, _ in p]), np.stack([v for _, v in p])) if p else None for p in kept]
        templates, agree = templates_with(packed, batch, qualities, threshold, metric, 0.05)
        for i in range(rows):
            want, agrees = _reference_template_with(kept[i], batch[i], qualities[i], threshold, metric, 0.05)
            assert agree[i] == agrees
            assert templates[i].tobytes() == np.asarray(want, np.float32).tobytes()
            one, one_agrees = template_with(kept[i], batch[i], qualities[i], threshold, metric, 0.05)
            assert one_agrees == agrees and np.asarray(one).tobytes() == np.asarray(want).tobytes()
            # What the policy's update asks (agreement alone, no template made): the same answer.
            assert template_agrees(kept[i], batch[i], threshold, metric, 0.05) == agrees
            joined += bool(kept[i]) and agrees
            unlike += not agrees
    assert joined > 100 and unlike > 100  # both branches were exercised
