from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.demo import Actor, Keyframe, Scenario, bench_scenario, images_from_dir, render, standard_scenario
from app.demo.background import make_background
from app.demo.face_locator import RetinaFaceLocator
from app.demo.render import load_sprites
from app.demo.sprites import cut_sprite, locate_photo
from app.errors import UserError
from app.tracking.matching import box_iou
from tests.demo.rendered_demo import RenderedDemo
from tests.support.shared_data import KNN_TRAIN, SHARED_IDENTITIES


def _digests(scenario: Scenario, sprites: dict) -> list[str]:
    return [hashlib.sha256(frame.tobytes()).hexdigest() for frame, _ in render(scenario, sprites=sprites)]


def _inside(box: tuple[float, ...], w: int, h: int) -> bool:
    return box[0] > 0 and box[1] > 0 and box[2] < w and box[3] < h


def test_same_seed_renders_the_same_frames(rendered_demo: RenderedDemo, locator: RetinaFaceLocator) -> None:
    short = replace(rendered_demo.scenario, n_frames=60)
    again = _digests(short, load_sprites(short, locator))  # sprites cut again from the photos
    assert again == rendered_demo.digests[:60]
    assert len(set(again)) > 50  # and it is a video, not one still


def test_another_seed_renders_other_frames(demo_images_dir: Path, locator: RetinaFaceLocator) -> None:
    images = {"obama": [demo_images_dir / "obama2.jpg"]}
    seed0, seed1 = (replace(standard_scenario(images, seed=s), n_frames=40) for s in (0, 1))
    assert _digests(seed0, load_sprites(seed0, locator)) != _digests(seed1, load_sprites(seed1, locator))


def test_ground_truth_boxes_lie_inside_the_frame_and_hold_the_landmarks(rendered_demo: RenderedDemo) -> None:
    w, h = rendered_demo.scenario.size
    faces = [f for frame in rendered_demo.truth for f in frame]
    assert len(faces) > 400
    for f in faces:
        x1, y1, x2, y2 = f.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0 < f.visible <= 1
        if f.visible >= 0.99:  # a whole face: its five landmarks are inside its box
            pts = np.array(f.landmarks)
            assert np.all((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2))


def test_demo_faces_are_sized_for_detection_and_never_show_one_person_twice(
    rendered_demo: RenderedDemo,
) -> None:
    heights = [f.box[3] - f.box[1] for frame in rendered_demo.truth for f in frame if f.visible >= 0.99]
    assert min(heights) >= 80 and max(heights) <= 200
    assert max(heights) / min(heights) > 1.6  # scale changes
    for frame in rendered_demo.truth:
        assert max(Counter(f.label for f in frame).values(), default=1) == 1
    assert sum(1 for frame in rendered_demo.truth if len(frame) >= 2) > 150


def test_a_crossing_occludes_the_face_behind_and_it_reappears(rendered_demo: RenderedDemo) -> None:
    w, h = rendered_demo.scenario.size
    truth = rendered_demo.truth
    by_frame = [{f.id: f for f in frame} for frame in truth]
    # Frames where actor 0 is fully inside the frame yet mostly hidden: only actor 1 (in front) can hide it.
    hidden = [
        i
        for i, faces in enumerate(by_frame)
        if 0 in faces and faces[0].visible < 0.3 and _inside(faces[0].box, w, h)
    ]
    assert hidden, "no frame where the crosser hides actor 0"
    for i in hidden:
        a, b = by_frame[i][0].box, by_frame[i][1].box
        assert min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])  # the boxes overlap
        assert by_frame[i][1].visible == 1.0  # the one in front is not covered
    before = [i for i in range(hidden[0]) if 0 in by_frame[i] and by_frame[i][0].visible == 1.0]
    assert len(before) > 25
    fps = int(rendered_demo.scenario.fps)
    after = range(hidden[-1] + 1, hidden[-1] + fps)
    assert any(0 in by_frame[i] and by_frame[i][0].visible == 1.0 for i in after), "actor 0 never reappears"


def test_visible_fraction_at_the_border_is_the_share_inside_the_frame(
    demo_images_dir: Path, locator: RetinaFaceLocator
) -> None:
    # One face sliding from the centre to the left border at constant size: at the end half of it is out.
    actor = Actor(
        0, "obama", demo_images_dir / "obama2.jpg", (Keyframe(0, 0.5, 0.5, 0.3), Keyframe(1, 0.0, 0.5, 0.3))
    )
    scenario = Scenario(size=(640, 360), fps=10, n_frames=11, actors=(actor,))
    truth = [faces for _, faces in render(scenario, locator=locator)]
    full = truth[0][0]
    edge = truth[10][0]
    full_width = full.box[2] - full.box[0]
    assert full.visible == 1.0
    assert edge.box[0] == 0.0
    assert abs(edge.visible - edge.box[2] / full_width) < 0.02
    assert 0.4 < edge.visible < 0.6


def test_a_sprite_in_front_hides_the_face_behind_it(
    demo_images_dir: Path, locator: RetinaFaceLocator
) -> None:
    def actor(i: int, x: float, z: int) -> Actor:
        return Actor(
            i,
            f"p{i}",
            demo_images_dir / "obama2.jpg",
            (Keyframe(0, x, 0.5, 0.3), Keyframe(1, x, 0.5, 0.3)),
            z=z,
        )

    for x_front, expect_back in ((0.5, None), (0.56, (0.05, 0.6)), (0.9, (1.0, 1.0))):
        scenario = Scenario(
            size=(640, 360), fps=1, n_frames=1, actors=(actor(0, 0.5, 0), actor(1, x_front, 1))
        )
        ((_, faces),) = render(scenario, locator=locator)
        by_id = {f.id: f for f in faces}
        assert by_id[1].visible == 1.0
        if expect_back is None:
            assert 0 not in by_id  # fully covered faces are not in the ground truth
        else:
            assert expect_back[0] <= by_id[0].visible <= expect_back[1]


def test_the_person_who_leaves_returns_with_the_same_id(rendered_demo: RenderedDemo) -> None:
    present = [any(f.id == 0 for f in frame) for frame in rendered_demo.truth]
    first, last = present.index(True), len(present) - 1 - present[::-1].index(True)
    # The longest absence between the first and the last appearance is the person being away (not a short
    # full occlusion during the crossing).
    runs, start = [], None
    for i in range(first, last + 1):
        if not present[i] and start is None:
            start = i
        elif present[i] and start is not None:
            runs.append((start, i))
            start = None
    gap, back = max(runs, key=lambda r: r[1] - r[0])
    fps = rendered_demo.scenario.fps
    assert (back - gap) / fps > 2 and last == len(present) - 1 and (back - first) / fps > 4
    # The other Obama photo is on screen during the absence only.
    other = [i for i, frame in enumerate(rendered_demo.truth) if any(f.id == 2 for f in frame)]
    assert other and gap <= other[0] and other[-1] < back


def test_sprites_keep_the_detected_face_inside_them(rendered_demo: RenderedDemo) -> None:
    for sprite in rendered_demo.sprites.values():
        h, w = sprite.bgra.shape[:2]
        x1, y1, x2, y2 = sprite.face_box
        assert 0 < x1 < x2 < w and 0 < y1 < y2 < h
        alpha = sprite.bgra[int(y1) : int(y2), int(x1) : int(x2), 3]
        assert alpha.min() > 200  # the face is opaque
        assert sprite.bgra[0, 0, 3] == 0 and sprite.bgra[-1, -1, 3] == 0  # the corners are transparent
    mirrored = rendered_demo.sprites[1]
    lms = mirrored.landmarks
    assert lms[0, 0] < lms[1, 0] and lms[3, 0] < lms[4, 0]  # still image-left first after the flip


def test_bench_keeps_many_faces_in_every_frame(demo_images_dir: Path, locator: RetinaFaceLocator) -> None:
    images = {"obama": [demo_images_dir / "obama2.jpg"], "biden": [demo_images_dir / "biden.jpg"]}
    scenario = replace(bench_scenario(images, seed=0), n_frames=50)
    counts = [len(faces) for _, faces in render(scenario, locator=locator)]
    assert min(counts) >= 8 and max(counts) == 10


def test_an_actor_outside_the_frame_has_no_ground_truth(
    demo_images_dir: Path, locator: RetinaFaceLocator
) -> None:
    actor = Actor(
        0, "obama", demo_images_dir / "obama2.jpg", (Keyframe(0, -0.5, 0.5, 0.2), Keyframe(1, -0.4, 0.5, 0.2))
    )
    scenario = Scenario(size=(640, 360), fps=10, n_frames=10, actors=(actor,))
    assert all(faces == [] for _, faces in render(scenario, locator=locator))


def test_rendering_12_s_of_720p_gives_300_full_size_frames(rendered_demo: RenderedDemo) -> None:
    # How long it takes is a benchmark's business, not a unit test's (it depends on the machine's load).
    shapes = [frame.shape for frame, _ in render(rendered_demo.scenario, sprites=rendered_demo.sprites)]
    assert len(shapes) == 300 and set(shapes) == {(720, 1280, 3)}


def test_strangers_scenario_renders_every_photo(locator: RetinaFaceLocator) -> None:
    scenario = standard_scenario(images_from_dir(KNN_TRAIN), seconds=8, seed=1)
    seen = Counter(
        f.label for _, faces in render(scenario, locator=locator) for f in faces if f.visible >= 0.9
    )
    assert set(seen) == {"alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"}


def test_a_photo_without_a_face_is_a_user_error(tmp_path: Path, locator: RetinaFaceLocator) -> None:
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), make_background((320, 240), seed=5))
    actor = Actor(0, "nobody", blank, (Keyframe(0, 0.5, 0.5, 0.2), Keyframe(1, 0.5, 0.5, 0.2)))
    with pytest.raises(UserError, match="no face found in .*wall.png"):
        load_sprites(Scenario(size=(320, 240), fps=1, n_frames=1, actors=(actor,)), locator)


def test_a_face_cut_off_by_its_photo_still_makes_a_sprite(
    demo_images_dir: Path, locator: RetinaFaceLocator
) -> None:
    # The ellipse leaves the photo here; the crop is padded with edge pixels instead of shifting the face.
    image, face, _ = locate_photo(demo_images_dir / "obama_partial_face.jpg", locator)
    sprite = cut_sprite(image, face)
    h, w = sprite.bgra.shape[:2]
    fx1, fy1, fx2, fy2 = sprite.face_box
    assert 0 < fx1 < fx2 < w and 0 < fy1 < fy2 < h
    assert abs((fx1 + fx2) / 2 - w / 2) < 2  # the face stays centred in its sprite


@pytest.mark.parametrize(
    "photo", ["howard/face-recognition-howard_5.png", "leonard/face-recognition-lennard_5.png"]
)
def test_the_ground_truth_box_of_a_tight_face_crop_is_the_detectors_box_on_the_drawn_face(
    photo: str, locator: RetinaFaceLocator
) -> None:
    # 150 px crops the face fills: found on the bare photo, the box was clipped to it and 1.2-1.5x smaller
    # than the detector's box on the sprite drawn in a frame (IoU 0.48-0.52 at these sizes).
    path = SHARED_IDENTITIES / "bbt" / photo
    for face_px in (140, 260):
        keyframes = (Keyframe(0, 0.5, 0.5, face_px / 720), Keyframe(1, 0.5, 0.5, face_px / 720))
        scenario = Scenario(size=(1280, 720), fps=1, n_frames=1, actors=(Actor(0, "p", path, keyframes),))
        sprite = load_sprites(scenario, locator)[0]
        assert sprite.truth_box is not None  # the bare photo's box still sizes the face drawn
        assert sprite.truth_box[3] - sprite.truth_box[1] > 1.1 * sprite.face_height
        frame, faces = next(render(scenario, sprites={0: sprite}))
        found = locator.detect(frame)
        assert len(found.scores) == 1
        iou = box_iou(np.array([faces[0].box]), found.boxes.astype(np.float64))[0, 0]
        assert iou >= 0.7, (face_px, iou)
