from __future__ import annotations

from pathlib import Path

import pytest

from app.demo import Actor, Keyframe, Scenario, bench_scenario, demo_sets, images_from_dir, standard_scenario
from app.errors import UserError
from tests.support.shared_data import KNN_TRAIN


def test_keyframes_interpolate_linearly_and_bound_the_time_on_screen() -> None:
    actor = Actor(0, "a", Path("a.jpg"), (Keyframe(1.0, 0.0, 0.2, 0.1), Keyframe(3.0, 1.0, 0.6, 0.3)))
    mid = actor.position(2.0)
    assert mid is not None
    assert (mid.x, mid.y, mid.face_h) == pytest.approx((0.5, 0.4, 0.2))
    assert actor.position(0.99) is None
    assert actor.position(3.01) is None
    assert actor.position(3.0).x == pytest.approx(1.0)


def test_actor_rejects_unordered_keyframes() -> None:
    with pytest.raises(ValueError, match="time order"):
        Actor(0, "a", Path("a.jpg"), (Keyframe(2.0, 0, 0, 0.1), Keyframe(1.0, 0, 0, 0.1)))


def test_scenario_rejects_odd_sizes_with_a_user_error() -> None:
    with pytest.raises(UserError, match="1281x720"):
        Scenario(size=(1281, 720), fps=25, n_frames=10, actors=())


def test_demo_sets_keep_enrollment_photos_out_of_the_video_except_the_only_biden(
    demo_images_dir: Path,
) -> None:
    sets = demo_sets(demo_images_dir)
    assert [p.name for p in sets.enroll["obama"]] == ["obama.jpg"]
    assert [p.name for p in sets.enroll["biden"]] == ["biden.jpg"]
    assert [p.name for p in sets.video["obama"]] == ["obama2.jpg", "obama3.jpg"]
    assert [p.name for p in sets.video["biden"]] == ["biden.jpg"]


def test_demo_sets_name_the_missing_photo(tmp_path: Path) -> None:
    (tmp_path / "obama.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="obama2.jpg.*app.models fetch"):
        demo_sets(tmp_path)


def test_demo_scenario_casts_the_video_set(demo_images_dir: Path) -> None:
    scenario = standard_scenario(demo_sets(demo_images_dir).video, seed=0)
    cast = [(a.id, a.label, a.image.name, a.flip) for a in scenario.actors]
    # obama3 takes slot 2, which is on screen only while slot 0 (obama2) is away; Biden is always mirrored.
    assert cast == [
        (0, "obama", "obama2.jpg", False),
        (1, "biden", "biden.jpg", True),
        (2, "obama", "obama3.jpg", False),
    ]
    assert all(abs(a.brightness) >= 12 for a in scenario.actors)
    assert scenario.n_frames == 300 and scenario.size == (1280, 720)


def test_seed_changes_paths_but_not_the_script(demo_images_dir: Path) -> None:
    video = demo_sets(demo_images_dir).video
    a, b = standard_scenario(video, seed=0), standard_scenario(video, seed=1)
    assert a == standard_scenario(video, seed=0)
    assert a.actors[0].keyframes != b.actors[0].keyframes
    assert [x.label for x in a.actors] == [x.label for x in b.actors]


def test_images_from_dir_reads_label_folders_and_flat_files(tmp_path: Path) -> None:
    knn = images_from_dir(KNN_TRAIN)
    assert sorted(knn) == ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
    assert len(knn["obama"]) == 2
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "obama_partial_face.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    flat = images_from_dir(tmp_path)
    assert {k: [p.name for p in v] for k, v in flat.items()} == {
        "biden": ["biden.jpg"],
        "obama": ["obama.jpg", "obama2.jpg"],
    }


def test_images_from_dir_without_photos_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no face photos"):
        images_from_dir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        images_from_dir(tmp_path / "missing")


def test_standard_scenario_gives_every_photo_an_actor() -> None:
    images = images_from_dir(KNN_TRAIN)
    scenario = standard_scenario(images, seconds=6, seed=2)
    assert len(scenario.actors) == sum(len(v) for v in images.values())
    assert len({a.id for a in scenario.actors}) == len(scenario.actors)


def test_bench_scenario_spreads_faces_over_a_1080p_grid(demo_images_dir: Path) -> None:
    images = {"obama": [demo_images_dir / "obama.jpg"], "biden": [demo_images_dir / "biden.jpg"]}
    scenario = bench_scenario(images, n_faces=12, seconds=4)
    assert scenario.size == (1920, 1080) and len(scenario.actors) == 12
    for actor in scenario.actors:
        assert actor.keyframes[0].t == 0 and actor.keyframes[-1].t >= scenario.seconds
        assert all(0.05 <= k.x <= 0.95 and 0.1 <= k.y <= 0.9 for k in actor.keyframes)
