"""What a synthetic video shows: actors (a face photo with a label) moving along keyframed paths.

Positions are normalised (x across the width, y down the height, the face centre) and face sizes are a
fraction of the frame height, so one scenario renders at any resolution. Everything random is drawn from
`seed` here, when the scenario is built; rendering itself is deterministic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import UserError
from app.models.paths import DEMO_IMAGES_DIR

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Keyframe:
    """Where an actor's face is at time `t` (seconds); linearly interpolated between keyframes."""

    t: float
    x: float  # face centre, fraction of the frame width (may lie outside 0..1: off screen)
    y: float  # face centre, fraction of the frame height
    face_h: float  # face box height, fraction of the frame height


@dataclass(frozen=True)
class Actor:
    """One face sprite on screen from its first keyframe's time to its last one's."""

    id: int  # ground-truth identity of this actor (unique per actor, kept across leaving and returning)
    label: str  # person name; the recognition pipeline should report it when the person is enrolled
    image: Path
    keyframes: tuple[Keyframe, ...]
    z: int = 0  # higher is nearer the camera: drawn later, occludes lower ones
    flip: bool = False  # mirror the sprite horizontally
    brightness: float = 0.0  # added to every channel of the sprite (-255..255)

    def __post_init__(self) -> None:
        if len(self.keyframes) < 2:
            raise ValueError(f"actor {self.id} ({self.label}) needs at least two keyframes")
        times = [k.t for k in self.keyframes]
        if any(b < a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError(f"actor {self.id} ({self.label}) keyframes must be in time order")

    def position(self, t: float) -> Keyframe | None:
        """Interpolated face placement at time `t`, or None outside the actor's time span."""
        kfs = self.keyframes
        if t < kfs[0].t or t > kfs[-1].t:
            return None
        times = np.fromiter((k.t for k in kfs), np.float64, len(kfs))
        i = int(np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(kfs) - 2))
        a, b = kfs[i], kfs[i + 1]
        w = 0.0 if b.t == a.t else (t - a.t) / (b.t - a.t)
        return Keyframe(t, a.x + (b.x - a.x) * w, a.y + (b.y - a.y) * w, a.face_h + (b.face_h - a.face_h) * w)


@dataclass(frozen=True)
class Scenario:
    size: tuple[int, int]  # (width, height) in pixels
    fps: float
    n_frames: int
    actors: tuple[Actor, ...]
    seed: int = 0  # drives the background; the paths were already drawn from it
    name: str = "custom"

    def __post_init__(self) -> None:
        w, h = self.size
        if w < 16 or h < 16 or w % 2 or h % 2:
            raise UserError(
                f"video size {w}x{h} is not usable; use even sides of at least 16 px, e.g. 1280x720"
            )
        if self.fps <= 0 or self.n_frames <= 0:
            raise UserError(f"fps {self.fps} and frame count {self.n_frames} must be positive")
        ids = [a.id for a in self.actors]
        if len(set(ids)) != len(ids):
            raise ValueError(f"actor ids must be unique, got {ids}")

    @property
    def seconds(self) -> float:
        return self.n_frames / self.fps

    def frame_time(self, index: int) -> float:
        return index / self.fps


@dataclass(frozen=True)
class DemoSets:
    """The README demo's photos: `enroll` goes into the gallery, `video` is what the synthetic video shows.

    They never share a photo except Biden's (only one exists), which the video shows mirrored, rescaled and
    with shifted brightness (it is actor slot 1 of `standard_scenario`, which is always flipped).
    """

    enroll: dict[str, list[Path]] = field(default_factory=dict)
    video: dict[str, list[Path]] = field(default_factory=dict)


def demo_sets(images_dir: Path = DEMO_IMAGES_DIR) -> DemoSets:
    """Enrollment and video photos from the demo images folder (face_recognition's test images)."""
    images_dir = Path(images_dir)
    enroll = {"obama": [images_dir / "obama.jpg"], "biden": [images_dir / "biden.jpg"]}
    video = {
        "obama": [images_dir / "obama2.jpg", images_dir / "obama3.jpg"],
        "biden": [images_dir / "biden.jpg"],
    }
    missing = sorted(
        {p.name for paths in (*enroll.values(), *video.values()) for p in paths if not p.is_file()}
    )
    if missing:
        raise UserError(
            f"demo images missing in {images_dir}: {', '.join(missing)}; run `python -m app.models fetch`"
        )
    return DemoSets(enroll=enroll, video=video)


def images_from_dir(folder: Path) -> dict[str, list[Path]]:
    """Labelled photos from `folder`: `<label>/<any>.jpg` sub-folders or flat files named `<label><n>.jpg`.

    Flat files whose name contains "partial" (cut-off faces) are left out: they make poor sprites.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; pass a folder of face photos")
    images: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            photos = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if photos:
                images.setdefault(path.name, []).extend(photos)
        elif path.suffix.lower() in IMAGE_SUFFIXES and "partial" not in path.stem:
            label = re.sub(r"[_\-]?\d+$", "", path.stem) or path.stem
            images.setdefault(label, []).append(path)
    if not images:
        raise UserError(f"no face photos (jpg/png) found in {folder}; pass a folder of face photos")
    return images


def _cast(images: dict[str, list[Path]]) -> list[tuple[str, Path]]:
    """Order photos into actor slots: first photo of each label, then the rest.

    Slot 2 appears only while slot 0 is away, so a second photo of slot 0's person goes there: the same person
    is then never on screen twice at once.
    """
    labels = [label for label, paths in images.items() if paths]
    if not labels:
        raise UserError("no face photos given for the synthetic video; pass at least one labelled photo")
    firsts = [(label, Path(images[label][0])) for label in labels]
    extras = [(label, Path(p)) for label in labels for p in images[label][1:]]
    same_as_first = [e for e in extras if e[0] == labels[0]]
    if same_as_first:
        gap_filler = same_as_first[0]
        extras.remove(gap_filler)
        firsts.insert(2, gap_filler)
    return firsts + extras


def _brightness(rng: np.random.Generator) -> float:
    # A visible but natural exposure change: 12..30 grey levels, either way.
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 30.0))


# Scripted paths of the standard scenario in normalised time u (0..1 of the video): (u, x, y, face_h).
# Slot 0 walks in from the left, is crossed in front by slot 1, leaves through the top and comes back from the
# left. Slot 1 walks right to left approaching the camera (growing), waits at the left edge, turns and walks
# back out. Slot 2 shows up only while slot 0 is away, moving towards the camera. Further slots walk across
# the top or bottom band, behind everyone.
_RETURNER = (
    (0.00, -0.12, 0.47, 0.17),
    (0.12, 0.27, 0.46, 0.17),
    (0.31, 0.31, 0.48, 0.19),
    (0.40, 0.33, -0.30, 0.19),
    (0.41, -0.25, -0.30, 0.20),  # behind the scenes: over to the left, off screen
    (0.65, -0.25, 0.50, 0.20),
    (0.77, 0.24, 0.50, 0.20),
    (1.00, 0.30, 0.47, 0.17),
)
_CROSSER = (
    (0.03, 1.25, 0.52, 0.14),
    (0.13, 0.72, 0.52, 0.17),
    (0.26, 0.06, 0.50, 0.24),
    (0.44, 0.06, 0.50, 0.24),
    (0.56, 0.40, 0.52, 0.22),
    (0.86, 0.75, 0.52, 0.16),
    (0.99, 1.25, 0.52, 0.14),
)
_GAP_FILLER = (
    (0.42, 1.25, 0.42, 0.13),
    (0.49, 0.68, 0.42, 0.14),
    (0.56, 0.66, 0.46, 0.25),
    (0.62, 1.35, 0.46, 0.25),
)
_TEMPLATES = ((_RETURNER, 1), (_CROSSER, 2), (_GAP_FILLER, 0))


def _wanderer(k: int, count: int) -> tuple[tuple[float, float, float, float], ...]:
    """Walk k of `count` across the top (even k, left to right) or bottom band (odd k, right to left).

    All walkers of a band go the same way at the same speed, started at even intervals, so they never overlap.
    """
    y, x0, x1 = (0.18, -0.15, 1.15) if k % 2 == 0 else (0.82, 1.15, -0.15)
    in_band = (count + 1 - k % 2) // 2
    start = 0.05 + (k // 2) * 0.5 / max(in_band, 1)
    return ((start, x0, y, 0.13), (start + 0.45, x1, y, 0.13))


def standard_scenario(
    images: dict[str, list[Path]],
    size: tuple[int, int] = (1280, 720),
    fps: float = 25.0,
    seconds: float = 12.0,
    seed: int = 0,
) -> Scenario:
    """The demo / test-fixture script: entering, leaving, a crossing with occlusion, scale changes, a return.

    One actor per photo (see `_cast` for the slot order). Faces are 90-190 px tall at 720p and frontal.
    Slot 1 is mirrored; every actor gets a seeded brightness shift and small seeded path jitter.
    """
    rng = np.random.default_rng(seed)
    cast = _cast(images)
    actors = []
    for slot, (label, path) in enumerate(cast):
        if slot < len(_TEMPLATES):
            template, z = _TEMPLATES[slot]
        else:
            template, z = _wanderer(slot - len(_TEMPLATES), len(cast) - len(_TEMPLATES)), -1
        dx, dy = rng.uniform(-0.02, 0.02, 2)
        keyframes = tuple(
            Keyframe(u * seconds, x + dx, y + dy, h * float(rng.uniform(0.96, 1.04)))
            for u, x, y, h in template
        )
        actors.append(
            Actor(
                id=slot,
                label=label,
                image=path,
                keyframes=keyframes,
                z=z,
                flip=slot % 2 == 1,
                brightness=_brightness(rng),
            )
        )
    n_frames = max(1, round(seconds * fps))
    return Scenario(size=size, fps=fps, n_frames=n_frames, actors=tuple(actors), seed=seed, name="standard")


def bench_scenario(
    images: dict[str, list[Path]],
    size: tuple[int, int] = (1920, 1080),
    fps: float = 25.0,
    seconds: float = 10.0,
    n_faces: int = 10,
    seed: int = 0,
) -> Scenario:
    """Many faces at once for throughput benchmarks: `n_faces` actors, all inside the frame all the time.

    Actors swing around the cells of a grid with seeded smooth (Lissajous) motion and a breathing scale (face
    0.08-0.15 of the frame height, ~90-165 px at 1080p). Neighbours pass in front of each other, so about
    half the frames have an occluded face (at times fully: 8-10 of 10 faces showing). Photos are reused
    round-robin, mirrored on every other round.
    """
    rng = np.random.default_rng(seed)
    photos = [(label, Path(p)) for label, paths in images.items() for p in paths]
    if not photos:
        raise UserError("no face photos given for the benchmark video; pass at least one labelled photo")
    w, h = size
    rows = max(1, round(math.sqrt(n_faces * h / w)))
    cols = math.ceil(n_faces / rows)
    order = rng.permutation(rows * cols)[:n_faces]
    step = 0.2  # keyframe spacing in seconds: dense enough that linear interpolation looks smooth
    times = np.arange(0.0, seconds + step, step)
    actors = []
    for i, cell in enumerate(order):
        r, c = divmod(int(cell), cols)
        # Cell centres inset from the borders so every face stays fully inside the frame.
        ax, ay = 0.06 + 0.88 * (c + 0.5) / cols, 0.1 + 0.8 * (r + 0.5) / rows
        fx, fy, fs = rng.uniform(0.08, 0.25, 3)
        px, py, ps = rng.uniform(0, 2 * math.pi, 3)
        base = rng.uniform(0.10, 0.13)
        # Wide swings so neighbours pass in front of each other; clipped so no face leaves the frame.
        xs = np.clip(ax + 0.88 * 0.7 / cols * np.sin(2 * math.pi * fx * times + px), 0.05, 0.95)
        ys = ay + 0.8 * 0.35 / rows * np.sin(2 * math.pi * fy * times + py)
        hs = base * (1.0 + 0.18 * np.sin(2 * math.pi * fs * times + ps))
        label, path = photos[i % len(photos)]
        keyframes = tuple(
            Keyframe(float(t), float(x), float(y), float(s))
            for t, x, y, s in zip(times, xs, ys, hs, strict=True)
        )
        actors.append(
            Actor(
                id=i,
                label=label,
                image=path,
                keyframes=keyframes,
                z=int(rng.integers(0, 1000)),
                flip=(i // len(photos)) % 2 == 1,
                brightness=_brightness(rng),
            )
        )
    n_frames = max(1, round(seconds * fps))
    return Scenario(size=size, fps=fps, n_frames=n_frames, actors=tuple(actors), seed=seed, name="bench")


def parse_size(text: str) -> tuple[int, int]:
    """A frame size written WIDTHxHEIGHT (e.g. 1280x720) as (width, height); ValueError for anything else."""
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def hard_scenario(
    cast: list[tuple[str, Path]],
    size: tuple[int, int] = (1280, 720),
    fps: float = 25.0,
    seconds: float = 20.0,
    seed: int = 0,
) -> Scenario:
    """Recognition under stress: one actor per (label, photo) of `cast`, walking across in shared lanes.

    Every third actor's face is small (30-60 px at 720p), the rest 80-145 px. Actors are paired into lanes
    walking opposite ways, so they cross with occlusion (seeded depth order); every other actor leaves and
    comes back the way it left after a few seconds off screen (same actor id). All seeded.
    """
    if not cast:
        raise UserError("no face photos given for the hard scenario; pass at least one labelled photo")
    rng = np.random.default_rng(seed)
    _, height = size
    lanes = np.linspace(0.2, 0.8, max(2, math.ceil(len(cast) / 2)))
    rng.shuffle(lanes)
    actors = []
    for i, (label, path) in enumerate(cast):
        small = i % 3 == 0
        face_h = float(rng.uniform(30, 60) / height if small else rng.uniform(80, 145) / height)
        y = float(lanes[i // 2 % len(lanes)] + rng.uniform(-0.03, 0.03))
        left_to_right = i % 2 == 0
        x0, x1 = (-0.15, 1.15) if left_to_right else (1.15, -0.15)
        walk = float(rng.uniform(0.22, 0.35)) * seconds
        returns = i % 4 in (1, 2)
        away = float(rng.uniform(0.08, 0.15)) * seconds if returns else 0.0
        total = walk * (2 if returns else 1) + away
        start = float(rng.uniform(0.0, max(seconds - total, 0.0)))
        # Pairs start close in time so the two of a lane meet on screen.
        if i % 2 == 1:
            start = float(np.clip(actors[-1].keyframes[0].t + rng.uniform(-0.05, 0.05) * seconds, 0.0,
                                  max(seconds - total, 0.0)))  # fmt: skip
        keyframes = [Keyframe(start, x0, y, face_h), Keyframe(start + walk, x1, y, face_h)]
        if returns:
            back = start + walk + away
            keyframes += [Keyframe(back, x1, y, face_h * 1.1), Keyframe(back + walk, x0, y, face_h * 1.1)]
        actors.append(
            Actor(
                id=i,
                label=label,
                image=Path(path),
                keyframes=tuple(keyframes),
                z=int(rng.integers(0, 1000)),
                flip=bool(rng.integers(0, 2)),
                brightness=_brightness(rng),
            )
        )
    n_frames = max(1, round(seconds * fps))
    return Scenario(size=size, fps=fps, n_frames=n_frames, actors=tuple(actors), seed=seed, name="hard")
