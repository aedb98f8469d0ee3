"""Fixtures for the models tests: the fetched checkpoints and the face chip maker."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.models import paths
from app.models.catalog import DETECTOR, EMBEDDER
from app.models.fetch import fetch_artifact
from tests.models.dlib_chips import FaceChipMaker


@pytest.fixture(scope="session")
def embedder_path() -> Path:
    fetch_artifact(EMBEDDER)
    return paths.DEFAULT_EMBEDDER


@pytest.fixture(scope="session")
def detector_path() -> Path:
    fetch_artifact(DETECTOR)
    return paths.DEFAULT_DETECTOR


@pytest.fixture(scope="session")
def chip_maker(detector_path: Path) -> FaceChipMaker:
    return FaceChipMaker(detector_path)
