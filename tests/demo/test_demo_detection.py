"""The ground truth agrees with what RetinaFace sees: the pipeline's acceptance test builds on this."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from app.demo import Scenario, bench_scenario, demo_sets, images_from_dir, render, standard_scenario
from app.demo.face_locator import RetinaFaceLocator
from app.demo.render import load_sprites
from tests.demo.rendered_demo import RenderedDemo
from tests.support.shared_data import KNN_TRAIN


def _iou(box: tuple[float, ...], boxes: np.ndarray) -> np.ndarray:
    if boxes.shape[0] == 0:
        return np.zeros((0,))
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (union - inter)


def _detection_stats(scenario: Scenario, locator: RetinaFaceLocator, every: int = 1) -> tuple[int, int, int]:
    """(faces with visible >= 0.9, of those found with IoU >= 0.5, detections matching no true face)."""
    wanted = found = stray = 0
    for index, (frame, faces) in enumerate(render(scenario, sprites=load_sprites(scenario, locator))):
        if index % every:
            continue
        boxes = locator.detect(frame).boxes
        for face in faces:
            if face.visible >= 0.9:
                wanted += 1
                found += bool(np.any(_iou(face.box, boxes) >= 0.5))
        for box in boxes:
            stray += not any(_iou(f.box, box[None])[0] >= 0.3 for f in faces)
    return wanted, found, stray


@pytest.mark.slow
def test_retinaface_finds_every_visible_face_of_the_demo_video(
    rendered_demo: RenderedDemo, locator: RetinaFaceLocator
) -> None:
    wanted, found, stray = _detection_stats(rendered_demo.scenario, locator)
    assert wanted > 400
    assert found / wanted >= 0.95, f"found {found} of {wanted} faces"
    assert stray <= 3


@pytest.mark.parametrize("seed", [1, 2])
def test_retinaface_finds_the_faces_of_other_seeds(
    demo_images_dir, locator: RetinaFaceLocator, seed: int
) -> None:
    scenario = standard_scenario(demo_sets(demo_images_dir).video, seed=seed)
    wanted, found, stray = _detection_stats(scenario, locator, every=10)
    assert wanted > 40
    assert found / wanted >= 0.95 and stray <= 1


def test_retinaface_finds_the_strangers(locator: RetinaFaceLocator) -> None:
    scenario = standard_scenario(images_from_dir(KNN_TRAIN), seed=0)
    wanted, found, stray = _detection_stats(scenario, locator, every=10)
    assert wanted > 100
    assert found / wanted >= 0.95 and stray <= 1


def test_retinaface_finds_the_bench_faces(demo_images_dir, locator: RetinaFaceLocator) -> None:
    sets = demo_sets(demo_images_dir)
    images = {"obama": sets.video["obama"] + sets.enroll["obama"], "biden": sets.video["biden"]}
    scenario = replace(bench_scenario(images, seed=0), n_frames=100)
    wanted, found, stray = _detection_stats(scenario, locator, every=10)
    assert wanted >= 80
    assert found / wanted >= 0.95 and stray <= 1
