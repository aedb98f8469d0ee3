"""Fixtures: the demo photos (from the shared face data, so no fetch is needed) and one rendered demo."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.demo import GroundTruthFace, Scenario, demo_sets, render, standard_scenario
from app.demo.face_locator import RetinaFaceLocator
from app.demo.render import load_sprites
from app.demo.sprites import Sprite
from tests.support.shared_data import SHARED_FACES

KNN_TRAIN = SHARED_FACES / "knn_examples" / "train"

# The demo images folder as `python -m app.models fetch` lays it out, built from the same files.
DEMO_FILES = {
    "obama.jpg": KNN_TRAIN / "obama" / "obama.jpg",
    "obama2.jpg": KNN_TRAIN / "obama" / "obama2.jpg",
    "obama3.jpg": SHARED_FACES / "edge" / "obama3.jpg",
    "biden.jpg": KNN_TRAIN / "biden" / "biden.jpg",
    "obama_partial_face.jpg": SHARED_FACES / "edge" / "obama_partial_face.jpg",
}


@dataclass
class RenderedDemo:
    scenario: Scenario
    sprites: dict[int, Sprite]
    truth: list[list[GroundTruthFace]]
    digests: list[str]  # sha256 of every frame


@pytest.fixture(scope="session")
def demo_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo_images")
    for name, source in DEMO_FILES.items():
        (folder / name).symlink_to(source)
    return folder


@pytest.fixture(scope="session")
def locator() -> RetinaFaceLocator:
    return RetinaFaceLocator()


@pytest.fixture(scope="session")
def demo_scenario(demo_images_dir: Path) -> Scenario:
    return standard_scenario(demo_sets(demo_images_dir).video, seed=0)


@pytest.fixture(scope="session")
def rendered_demo(demo_scenario: Scenario, locator: RetinaFaceLocator) -> RenderedDemo:
    sprites = load_sprites(demo_scenario, locator)
    truth, digests = [], []
    for frame, faces in render(demo_scenario, sprites=sprites):
        truth.append(faces)
        digests.append(hashlib.sha256(frame.tobytes()).hexdigest())
    return RenderedDemo(demo_scenario, sprites, truth, digests)
