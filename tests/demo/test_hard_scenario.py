from pathlib import Path

from app.demo import hard_scenario
from testbench.eval_tracking import hard_cast


def cast(n: int) -> list[tuple[str, Path]]:
    return [(f"p{i}", Path(f"p{i}.jpg")) for i in range(n)]


def test_every_third_face_is_small_and_the_rest_are_large():
    scenario = hard_scenario(cast(12), seed=3)
    heights = [a.keyframes[0].face_h * scenario.size[1] for a in scenario.actors]
    assert all(30 <= h <= 60 for h in heights[::3])
    assert all(80 <= h <= 145 for i, h in enumerate(heights) if i % 3)


def test_some_actors_leave_and_come_back_under_the_same_id_and_lane_pairs_walk_opposite_ways():
    scenario = hard_scenario(cast(12), seed=1)
    returners = [a for a in scenario.actors if len(a.keyframes) == 4]
    assert len(returners) == 6
    for actor in returners:  # off screen in between, back the way it left
        assert actor.keyframes[1].x == actor.keyframes[2].x and abs(actor.keyframes[1].x - 0.5) > 0.6
    for a, b in zip(scenario.actors[::2], scenario.actors[1::2], strict=True):
        assert (a.keyframes[1].x - a.keyframes[0].x) * (b.keyframes[1].x - b.keyframes[0].x) < 0


def test_the_same_seed_gives_the_same_scenario():
    assert hard_scenario(cast(8), seed=5) == hard_scenario(cast(8), seed=5)


def test_the_hard_cast_enrols_eight_people_with_one_or_three_photos_and_two_families_with_relatives():
    enroll, actors = hard_cast(0)
    counts = sorted(len(photos) for name, photos in enroll.items() if not name.startswith("families/"))
    assert counts == [1, 1, 1, 1, 3, 3, 3, 3]
    families = {n for n in enroll if n.startswith("families/")}
    assert len(families) == 2 and all(len(enroll[n]) == 1 for n in families)
    shown = {name: photo for name, photo in actors}
    assert set(enroll) <= set(shown)
    assert all(shown[n] not in enroll[n] for n in enroll)  # never the enrolled photo itself
    relatives = [n for n in shown if n.startswith("families/") and n not in enroll]
    assert len(relatives) >= 2  # look-alike strangers
    assert len([n for n in shown if n not in enroll]) >= 5
