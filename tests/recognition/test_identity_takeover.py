"""A track that may have been handed another face (a take-over at an occlusion, or a re-find after a gap)
shows no name until an embedding checks its face."""

import numpy as np
import pytest

from app.gallery.base import Match
from app.recognition.identity import TrackIdentities
from app.recognition.identity_config import IdentityConfig
from tests.recognition.test_identity import THRESHOLD, run, track, unit

ALICE, BOB = unit(1), unit(2)
SAYS = {  # what the gallery answers for each face: a clear, strong match (named on one view)
    id(ALICE): [Match("alice", 0.7), Match("bob", 0.2)],
    id(BOB): [Match("bob", 0.7), Match("alice", 0.2)],
}


def answer_with(faces: dict[int, np.ndarray]):
    return lambda track_id: (faces[track_id], SAYS[id(faces[track_id])])


def named_pair() -> TrackIdentities:
    """Track 1 (alice, left) and track 2 (bob, right), both named."""
    manager = TrackIdentities(IdentityConfig(), threshold=THRESHOLD, metric="euclidean")
    _, labels = run(manager, [track(1, x=100), track(2, x=300)], answer_with({1: ALICE, 2: BOB}))
    assert (labels[1].name, labels[2].name) == ("alice", "bob")
    return manager


def test_a_named_track_on_the_spot_where_another_vanished_hides_its_name_when_the_face_is_not_its_own():
    manager = named_pair()
    # Track 2 vanished (bob walked behind); track 1 now stands on bob's spot, holding bob's face.
    need, labels = run(manager, [track(1, x=300)], answer_with({1: BOB}))
    assert need == [1]  # checked at once
    assert labels[1].status == "pending" and labels[1].name is None  # never "alice" on bob's face
    # A second view of the same other face: the track starts over, and is named for the face it holds.
    need, labels = run(manager, [track(1, x=300)], answer_with({1: BOB}))
    assert need == [1]
    assert labels[1].name == "bob"


def test_a_named_track_on_a_vanished_tracks_spot_keeps_its_name_when_its_face_checks_out():
    manager = named_pair()
    need, labels = run(manager, [track(1, x=290)], answer_with({1: ALICE}))
    assert need == [1]
    assert labels[1].name == "alice"


def test_a_track_in_doubt_shows_no_name_while_its_face_is_not_embedded():
    manager = named_pair()
    # No embedding comes back on this frame (an asynchronous embedder): the label is withheld meanwhile.
    manager.select_for_embedding([track(1, x=300)], None)
    labels = manager.update([track(1, x=300)], {}, {})
    assert labels[1].status == "pending"
    assert manager.label(2).name == "bob"  # the vanished track keeps its own name for a re-find


def test_a_named_track_far_from_where_another_vanished_is_not_in_doubt():
    manager = named_pair()
    need, labels = run(manager, [track(1, x=105)], answer_with({1: ALICE}))
    assert need == []  # no reason to look again
    assert labels[1].name == "alice"


def test_a_named_track_back_after_a_gap_shows_its_name_at_once():
    manager = TrackIdentities(IdentityConfig(), threshold=THRESHOLD, metric="euclidean")
    run(manager, [track(1)], answer_with({1: ALICE}))
    for _ in range(3):
        run(manager, [], answer_with({}))
    need, labels = run(manager, [track(1)], answer_with({1: ALICE}))
    assert need == [1] and labels[1].name == "alice"  # looked at again, but never hidden


def test_a_track_restarted_by_a_take_over_is_checked_again_when_it_comes_back_after_a_gap():
    manager = named_pair()
    run(manager, [track(1, x=300)], answer_with({1: BOB}))
    _, labels = run(manager, [track(1, x=300)], answer_with({1: BOB}))
    assert labels[1].name == "bob"  # track 1 now holds bob's face (restarted by the take-over)
    for _ in range(3):
        run(manager, [], answer_with({}))
    # The tracker hands track 1 its first face again (alice, out from behind): not shown as bob.
    need, labels = run(manager, [track(1, x=120)], answer_with({1: ALICE}))
    assert need == [1] and labels[1].status == "pending"
    _, labels = run(manager, [track(1, x=120)], answer_with({1: ALICE}))
    assert labels[1].name == "alice"


def small_track(track_id: int) -> object:
    return track(track_id, size=20.0)  # votes of a face this small weigh too little to reach min_evidence


def test_a_small_face_matched_well_above_threshold_on_every_view_is_named_after_steady_votes():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    high = THRESHOLD + config.fast_margin + 0.02
    # bob close behind: ahead by more than match_margin (no abstention), by less than the lead a template of
    # steady_votes views needs to be sure (sure_lead / sqrt(n)), so the run of steady votes is what names it
    lead = (config.match_margin + config.sure_lead / np.sqrt(config.steady_votes)) / 2
    strong = [Match("alice", high), Match("bob", high - lead)]
    statuses, embedded = [], 0
    for _ in range(40):
        need, labels = run(manager, [small_track(1)], lambda _: (ALICE, strong))
        embedded += len(need)
        statuses.append(labels[1].status)
        if labels[1].status == "known":
            break
    assert labels[1].name == "alice"
    assert embedded == config.steady_votes  # named on the steady_votes-th strong view, not before
    assert statuses.count("pending") == len(statuses) - 1


def test_a_small_face_matched_just_above_threshold_is_not_named_on_steady_votes():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    weak = [Match("alice", THRESHOLD + config.consistent_margin / 2), Match("bob", THRESHOLD - 0.1)]
    for _ in range(200):
        _, labels = run(manager, [small_track(1)], lambda _: (ALICE, weak))
    assert labels[1].status == "pending"


def named_after(config: IdentityConfig, answers) -> tuple[str, int]:
    """Run a small face through `answers` (one list of matches per embedding): (status, embeddings made)."""
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    embedded = 0
    for _ in range(400):
        matches = answers[min(embedded, len(answers) - 1)]
        need, labels = run(manager, [small_track(1)], lambda _, m=matches: (ALICE, m))
        embedded += len(need)
        if labels[1].status == "known":
            break
    return labels[1].status, embedded


def test_a_template_settled_just_above_threshold_is_named_after_consistent_votes():
    config = IdentityConfig()
    settled = [Match("alice", THRESHOLD + config.consistent_margin + 0.01), Match("bob", THRESHOLD - 0.1)]
    status, embedded = named_after(config, [settled])
    assert status == "known"
    assert embedded == config.consistent_votes  # on the consistent_votes-th view in a row, not before


def test_consistent_votes_need_a_lead_over_the_next_person():
    config = IdentityConfig()
    high = THRESHOLD + config.consistent_margin + 0.01
    close = [Match("alice", high), Match("bob", high - config.consistent_lead / 2)]  # no abstention, no lead
    assert named_after(config, [close])[0] == "pending"


def test_one_view_below_threshold_restarts_the_run_of_consistent_votes():
    config = IdentityConfig()
    settled = [Match("alice", THRESHOLD + config.consistent_margin + 0.01), Match("bob", THRESHOLD - 0.1)]
    below = [Match("alice", THRESHOLD - 0.01), Match("bob", THRESHOLD - 0.1)]
    n = config.consistent_votes
    status, embedded = named_after(config, [settled] * (n - 1) + [below] + [settled] * n)
    assert status == "known" and embedded == 2 * n  # counted again from the view after the one below


def test_one_view_above_threshold_but_below_the_runs_margin_does_not_restart_the_run():
    config = IdentityConfig()
    settled = [Match("alice", THRESHOLD + config.consistent_margin + 0.01), Match("bob", THRESHOLD - 0.1)]
    dip = [Match("alice", THRESHOLD + config.consistent_margin / 4), Match("bob", THRESHOLD - 0.1)]
    n = config.consistent_votes
    status, embedded = named_after(config, [settled] * 2 + [dip] + [settled] * n)
    assert status == "known" and embedded == n  # the run's mean is above threshold + consistent_margin


def test_a_run_whose_mean_is_below_the_margin_is_not_named_on_consistent_votes():
    config = IdentityConfig()
    low = [Match("alice", THRESHOLD + config.consistent_margin / 2), Match("bob", THRESHOLD - 0.1)]
    assert named_after(config, [low])[0] == "pending"


def sure_only() -> IdentityConfig:
    """Only the one-view and n-view sure rules name (no runs of steady or consistent votes)."""
    return IdentityConfig(steady_votes=1000, consistent_votes=0)


def test_a_template_of_n_views_is_sure_at_sure_margin_and_lead_over_sqrt_n():
    config = sure_only()
    factor = 0.6  # of sure_margin and sure_lead: sure once 1 / sqrt(n) <= factor, i.e. on the 3rd view
    high = THRESHOLD + factor * config.sure_margin + 1e-6
    answer = [Match("alice", high), Match("bob", high - factor * config.sure_lead - 1e-6)]
    status, embedded = named_after(config, [answer])
    assert status == "known" and embedded == int(np.ceil(1 / factor**2)) == 3


def test_a_template_of_n_views_needs_the_lead_over_sqrt_n_too():
    config = sure_only()
    high = THRESHOLD + config.sure_margin / 2 + 1e-6  # margin enough from the 4th view on
    lead = config.sure_lead / 3 + 1e-6  # lead enough from the 9th view on
    answer = [Match("alice", high), Match("bob", high - lead)]
    status, embedded = named_after(config, [answer])
    assert status == "known" and embedded == 9


def test_a_template_just_above_threshold_is_never_sure_however_many_views():
    config = sure_only()
    high = THRESHOLD + config.sure_margin / np.sqrt(config.max_embeddings + 1) - 0.001
    answer = [Match("alice", high), Match("bob", THRESHOLD - 0.2)]
    assert named_after(config, [answer])[0] == "pending"


@pytest.mark.parametrize("consistent_votes", [IdentityConfig().consistent_votes, 0])
def test_a_track_decided_unknown_on_poor_first_views_is_named_by_a_run_of_consistent_votes(consistent_votes):
    config = IdentityConfig(consistent_votes=consistent_votes)
    far_below = [Match("alice", THRESHOLD - 0.15), Match("bob", THRESHOLD - 0.2)]
    settled = [Match("alice", THRESHOLD + config.consistent_margin + 0.01), Match("bob", THRESHOLD - 0.1)]
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    statuses = []
    # Large, poor first views decide "unknown"; then the face shrinks (walks away) and matches steadily, with
    # votes too light to outweigh the unknown ones: only the run of consistent votes names it.
    for face, answers in ((track(1), [far_below] * 12), (small_track(1), [settled] * 200)):
        for matches in answers:
            _, labels = run(manager, [face], lambda _, m=matches: (ALICE, m))
            statuses.append(labels[1].status)
    assert "unknown" in statuses[:12]
    assert statuses[-1] == ("known" if consistent_votes else "unknown")


def test_an_ambiguous_strong_match_breaks_the_run_of_steady_votes():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    high = THRESHOLD + config.fast_margin + 0.02
    # clear: ahead by more than match_margin, by less than a template of steady_votes views needs to be sure
    lead = (config.match_margin + config.sure_lead / np.sqrt(2 * config.steady_votes)) / 2
    clear = [Match("alice", high), Match("bob", high - lead)]
    tied = [Match("alice", high), Match("bob", high - config.match_margin / 2)]  # abstains
    answers = [clear] * (config.steady_votes - 1) + [tied] + [clear] * (config.steady_votes - 1)
    embedded = 0
    while embedded < len(answers):
        matches = answers[embedded]
        need, labels = run(manager, [small_track(1)], lambda _, m=matches: (ALICE, m))
        embedded += len(need)
    assert labels[1].status == "pending"  # never steady_votes clear matches in a row


def test_an_undecided_track_is_looked_at_again_every_unknown_refresh_interval():
    config = IdentityConfig()
    manager = TrackIdentities(config, threshold=THRESHOLD, metric="euclidean")
    below = [Match("alice", THRESHOLD - 0.01), Match("bob", THRESHOLD - 0.2)]  # weak: stays pending
    frames = []
    for frame in range(200):
        need, labels = run(manager, [small_track(1)], lambda _: (ALICE, below))
        if need:
            frames.append(frame)
    assert labels[1].status == "pending"
    gaps = np.diff(frames)
    assert len(frames) > config.max_pending_embeddings
    assert set(gaps[config.max_pending_embeddings :]) == {config.unknown_refresh_interval}


@pytest.mark.parametrize("bad", [{"takeover_iou": 0.0}, {"takeover_iou": 1.5}, {"steady_votes": 0}])
def test_a_take_over_overlap_outside_0_1_or_no_steady_votes_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        IdentityConfig(**bad)
