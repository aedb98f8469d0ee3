"""Renders a Scenario frame by frame: sprites composited on the background, with per-frame ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from app.demo.background import make_background
from app.demo.face_locator import FaceLocator, RetinaFaceLocator
from app.demo.ground_truth import ActorInfo, GroundTruth, GroundTruthFace
from app.demo.scenario import Actor, Scenario
from app.demo.sprites import OPAQUE, Sprite, cut_sprite, locate_photo


@dataclass
class _Placement:
    """One sprite as drawn in one frame."""

    actor: Actor
    x: int  # top-left of the scaled sprite in frame pixels (may be negative)
    y: int
    alpha: np.ndarray  # (h,w) uint8 of the scaled sprite
    face_box: np.ndarray  # (4,) float64 in frame pixels, unclipped: the ground truth's box (Sprite.truth_box)
    landmarks: np.ndarray  # (5,2) float64 in frame pixels


def load_sprites(scenario: Scenario, locator: FaceLocator | None = None) -> dict[int, Sprite]:
    """Each actor's sprite; every photo is read and searched for its face once, however many actors use it."""
    locator = locator if locator is not None else RetinaFaceLocator()
    photos = {path: locate_photo(path, locator) for path in dict.fromkeys(a.image for a in scenario.actors)}
    return {
        a.id: cut_sprite(image, face, flip=a.flip, brightness=a.brightness, truth=truth)
        for a in scenario.actors
        for image, face, truth in [photos[a.image]]
    }


def _place(
    actor: Actor, sprite: Sprite, t: float, frame_wh: tuple[int, int]
) -> tuple[int, int, np.ndarray, float, float] | None:
    """(x, y, scaled bgra, sx, sy) of the actor's sprite at time t, or None when it is not on screen."""
    kf = actor.position(t)
    if kf is None:
        return None
    fw, fh = frame_wh
    sh, sw = sprite.bgra.shape[:2]
    scale = kf.face_h * fh / sprite.face_height
    nw, nh = round(sw * scale), round(sh * scale)
    if nw < 2 or nh < 2:
        return None
    sx, sy = nw / sw, nh / sh  # the exact factors cv2.resize applies for this output size
    fcx, fcy = sprite.face_center
    x, y = round(kf.x * fw - fcx * sx), round(kf.y * fh - fcy * sy)
    if x >= fw or y >= fh or x + nw <= 0 or y + nh <= 0:
        return None
    return x, y, sprite.scaled(nw, nh), sx, sy


def _clip(x: int, y: int, w: int, h: int, frame_wh: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
    """Slices (frame rows, frame cols, sprite rows, sprite cols) of a w x h sprite at (x, y), clipped."""
    fw, fh = frame_wh
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def _blend(frame: np.ndarray, bgra: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend `bgra` onto `frame` at (x, y), touching only the overlapping region."""
    fh, fw = frame.shape[:2]
    rows, cols, srows, scols = _clip(x, y, bgra.shape[1], bgra.shape[0], (fw, fh))
    roi = frame[rows, cols]
    spr = bgra[srows, scols]
    alpha = spr[..., 3:4].astype(np.float32) * np.float32(1 / 255)
    base = roi.astype(np.float32)
    roi[:] = (base + (spr[..., :3] - base) * alpha + 0.5).astype(np.uint8)


def _visible_fraction(face: _Placement, in_front: list[_Placement], frame_wh: tuple[int, int]) -> float:
    """Share of the face box inside the frame and not covered by an opaque pixel of a nearer sprite."""
    fw, fh = frame_wh
    bx0, by0, bx1, by1 = (int(round(v)) for v in face.face_box)
    total = (bx1 - bx0) * (by1 - by0)
    cx0, cy0, cx1, cy1 = max(bx0, 0), max(by0, 0), min(bx1, fw), min(by1, fh)
    if total <= 0 or cx1 <= cx0 or cy1 <= cy0:
        return 0.0
    covered = np.zeros((cy1 - cy0, cx1 - cx0), bool)
    for other in in_front:
        oh, ow = other.alpha.shape
        ox0, oy0 = max(cx0, other.x), max(cy0, other.y)
        ox1, oy1 = min(cx1, other.x + ow), min(cy1, other.y + oh)
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        opaque = other.alpha[oy0 - other.y : oy1 - other.y, ox0 - other.x : ox1 - other.x] > OPAQUE
        covered[oy0 - cy0 : oy1 - cy0, ox0 - cx0 : ox1 - cx0] |= opaque
    showing = (cx1 - cx0) * (cy1 - cy0) - int(covered.sum())
    return showing / total


def render(
    scenario: Scenario, locator: FaceLocator | None = None, sprites: dict[int, Sprite] | None = None
) -> Iterator[tuple[np.ndarray, list[GroundTruthFace]]]:
    """Yield (frame BGR uint8 (h,w,3), ground truth of its visible faces) for every frame of the scenario.

    Faces come out back to front. `locator` finds the face in each photo (default: RetinaFace on the default
    detector); pass `sprites` from `load_sprites` to render a scenario several times without re-detecting.
    """
    sprites = sprites if sprites is not None else load_sprites(scenario, locator)
    frame_wh = scenario.size
    fw, fh = frame_wh
    background = make_background(frame_wh, scenario.seed)
    order = sorted(scenario.actors, key=lambda a: (a.z, a.id))
    for index in range(scenario.n_frames):
        t = scenario.frame_time(index)
        frame = background.copy()
        placed: list[_Placement] = []
        for actor in order:
            sprite = sprites[actor.id]
            placement = _place(actor, sprite, t, frame_wh)
            if placement is None:
                continue
            x, y, bgra, sx, sy = placement
            _blend(frame, bgra, x, y)
            to_frame = np.array([sx, sy])
            origin = np.array([x, y])
            truth_box = sprite.face_box if sprite.truth_box is None else sprite.truth_box
            truth_lms = sprite.landmarks if sprite.truth_landmarks is None else sprite.truth_landmarks
            box = np.concatenate([truth_box[:2] * to_frame + origin, truth_box[2:] * to_frame + origin])
            lms = truth_lms * to_frame + origin
            placed.append(_Placement(actor, x, y, np.ascontiguousarray(bgra[..., 3]), box, lms))
        faces = []
        for i, p in enumerate(placed):
            visible = _visible_fraction(p, placed[i + 1 :], frame_wh)
            if visible <= 0.0:
                continue
            x1, y1, x2, y2 = (float(v) for v in p.face_box)
            box = (
                round(min(max(x1, 0.0), fw), 2),
                round(min(max(y1, 0.0), fh), 2),
                round(min(max(x2, 0.0), fw), 2),
                round(min(max(y2, 0.0), fh), 2),
            )
            landmarks = tuple((round(float(px), 2), round(float(py), 2)) for px, py in p.landmarks)
            faces.append(GroundTruthFace(p.actor.id, p.actor.label, box, round(visible, 4), landmarks))
        yield frame, faces


def actor_infos(scenario: Scenario) -> tuple[ActorInfo, ...]:
    return tuple(
        ActorInfo(a.id, a.label, str(a.image), a.flip, round(a.brightness, 3)) for a in scenario.actors
    )


def ground_truth_of(scenario: Scenario, frames: list[list[GroundTruthFace]]) -> GroundTruth:
    """Bundle rendered per-frame faces with the scenario's metadata."""
    return GroundTruth(
        size=scenario.size,
        fps=scenario.fps,
        n_frames=scenario.n_frames,
        seed=scenario.seed,
        scenario=scenario.name,
        actors=actor_infos(scenario),
        frames=tuple(tuple(f) for f in frames),
    )
