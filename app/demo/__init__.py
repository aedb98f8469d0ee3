"""Synthetic face videos with ground truth: the README demo, test fixtures and benchmark input.

Face sprites cut from labelled photos move over a procedural background along scripted paths; every frame
comes with each visible face's actor id, label, box and visible fraction. See `python -m app.demo --help`.
"""

from app.demo.ground_truth import GroundTruth, GroundTruthFace, ground_truth_path, load_ground_truth
from app.demo.render import load_sprites, render
from app.demo.scenario import (
    Actor,
    DemoSets,
    Keyframe,
    Scenario,
    bench_scenario,
    demo_sets,
    hard_scenario,
    images_from_dir,
    parse_size,
    standard_scenario,
)
from app.demo.video import write_video

__all__ = [
    "Actor",
    "DemoSets",
    "GroundTruth",
    "GroundTruthFace",
    "Keyframe",
    "Scenario",
    "bench_scenario",
    "demo_sets",
    "ground_truth_path",
    "hard_scenario",
    "images_from_dir",
    "parse_size",
    "load_ground_truth",
    "load_sprites",
    "render",
    "standard_scenario",
    "write_video",
]
