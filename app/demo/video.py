"""Writes a rendered scenario as an mp4 (OpenCV, mp4v) plus its ground-truth JSON next to it."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

from app.demo.face_locator import FaceLocator
from app.demo.ground_truth import GroundTruthFace, ground_truth_path, save_ground_truth
from app.demo.render import ground_truth_of, render
from app.demo.scenario import Scenario
from app.demo.sprites import Sprite
from app.errors import UserError

log = logging.getLogger(__name__)


def write_video(
    scenario: Scenario,
    path: Path,
    locator: FaceLocator | None = None,
    sprites: dict[int, Sprite] | None = None,
) -> Path:
    """Render `scenario` to `path` (mp4v) and its ground truth to `ground_truth_path(path)`; return `path`.

    Pass `sprites` from `load_sprites` to skip finding the faces in the photos again.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise UserError(f"video output {path} must end in .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), float(scenario.fps), scenario.size)
    if not writer.isOpened():
        raise UserError(
            f"cannot write video {path} (OpenCV has no mp4v encoder or the folder is not writable)"
        )
    frames: list[list[GroundTruthFace]] = []
    try:
        for frame, faces in render(scenario, locator=locator, sprites=sprites):
            writer.write(frame)
            frames.append(faces)
    finally:
        writer.release()
    truth_path = save_ground_truth(ground_truth_of(scenario, frames), ground_truth_path(path))
    log.info("wrote %s (%d frames) and %s", path, len(frames), truth_path)
    return path
