"""What the `rendered_demo` fixture (tests/demo/conftest.py) hands the demo tests."""

from __future__ import annotations

from dataclasses import dataclass

from app.demo import GroundTruthFace, Scenario
from app.demo.sprites import Sprite


@dataclass
class RenderedDemo:
    scenario: Scenario
    sprites: dict[int, Sprite]
    truth: list[list[GroundTruthFace]]
    digests: list[str]  # sha256 of every frame
