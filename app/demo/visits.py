"""A scenario of repeat visits: enrolled people and strangers who each come and go several times.

For the unknown-faces tests and benchmark: in each round every person of `people` shows up at their own
spot (side by side, never overlapping), drifts a little for `visit_s` seconds and leaves; a pause with nobody
on screen follows, long enough for the tracks to end, so every round is a new sighting of everyone. Each
visit is an actor of its own (its own id, the person's label), cycling through the person's photos, with a
seeded brightness shift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.demo.scenario import Actor, Keyframe, Scenario, _brightness
from app.errors import UserError


def visits_scenario(
    people: dict[str, list[Path]],
    rounds: int = 3,
    size: tuple[int, int] = (960, 540),
    fps: float = 25.0,
    visit_s: float = 2.6,
    pause_s: float = 3.0,
    face_h: float = 0.24,
    seed: int = 0,
) -> Scenario:
    """`rounds` visits of each person in `people` (label -> photos); see the module docstring."""
    labels = [label for label, photos in people.items() if photos]
    if not labels:
        raise UserError("no face photos given for the visits scenario")
    if len(labels) * face_h * size[1] * 0.9 > size[0]:
        raise UserError(f"{len(labels)} people do not fit side by side in a {size[0]}x{size[1]} frame")
    rng = np.random.default_rng(seed)
    actors: list[Actor] = []
    period = visit_s + pause_s
    for r in range(rounds):
        start = 0.3 + r * period
        order = rng.permutation(len(labels))  # people change places from round to round
        for slot, index in enumerate(order):
            label = labels[int(index)]
            photos = people[label]
            x = (slot + 0.5) / len(labels) + float(rng.uniform(-0.02, 0.02))
            y = 0.5 + float(rng.uniform(-0.08, 0.08))
            drift = float(rng.uniform(-0.03, 0.03))
            h = face_h * float(rng.uniform(0.92, 1.08))
            keyframes = (
                Keyframe(start, x, y, h),
                Keyframe(start + visit_s, x + drift, y, h * 1.05),
            )
            actors.append(
                Actor(
                    id=len(actors),
                    label=label,
                    image=Path(photos[r % len(photos)]),
                    keyframes=keyframes,
                    brightness=_brightness(rng),
                )
            )
    n_frames = round((0.3 + rounds * period) * fps)
    return Scenario(size=size, fps=fps, n_frames=n_frames, actors=tuple(actors), seed=seed, name="visits")
