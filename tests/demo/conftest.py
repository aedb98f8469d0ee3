"""Fixtures: the demo photos (from the shared face data, so no fetch is needed) and one rendered demo."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.demo import Scenario, demo_sets, render, standard_scenario
from app.demo.face_locator import RetinaFaceLocator
from app.demo.render import load_sprites
from tests.demo.rendered_demo import RenderedDemo
from tests.support.shared_data import DEMO_FILES


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
