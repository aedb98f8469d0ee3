"""Ground truth of a synthetic video: per frame, each visible face's actor id, label, box, visible fraction.

Stored as JSON next to the video (`ground_truth_path`): {"version", "size", "fps", "n_frames", "seed",
"scenario", "actors": [{id, label, image, flip, brightness}], "frames": [[{id, label, box, visible,
landmarks}, ...], ...]}, `box` = [x1, y1, x2, y2] in frame pixels clipped to the frame (the full face box,
also where other sprites cover it: RetinaFace's box on the actor's photo, framed by its edge pixels where
the face fills it (app.demo.sprites.locate_photo): the box the detector gives on the face as drawn),
`visible` = fraction of the unclipped face box that is inside the frame and not covered by a sprite in
front, `landmarks` = 5 (x, y) RetinaFace-order points (not clipped).
Faces with nothing showing (fully covered or outside the frame) are left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from app.errors import UserError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class GroundTruthFace:
    id: int  # actor id: the same person keeps it when leaving and returning
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, frame pixels, clipped to the frame
    visible: float  # 0..1
    landmarks: tuple[tuple[float, float], ...]  # 5 points, RetinaFace order, frame pixels


@dataclass(frozen=True)
class ActorInfo:
    id: int
    label: str
    image: str
    flip: bool
    brightness: float


@dataclass(frozen=True)
class GroundTruth:
    size: tuple[int, int]  # (width, height)
    fps: float
    n_frames: int
    seed: int
    scenario: str
    actors: tuple[ActorInfo, ...]
    frames: tuple[tuple[GroundTruthFace, ...], ...]

    def visible_faces(self, frame: int, min_visible: float = 0.0) -> list[GroundTruthFace]:
        """Faces of `frame` with at least `min_visible` of their box showing."""
        return [f for f in self.frames[frame] if f.visible >= min_visible]

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "size": list(self.size),
            "fps": self.fps,
            "n_frames": self.n_frames,
            "seed": self.seed,
            "scenario": self.scenario,
            "actors": [asdict(a) for a in self.actors],
            "frames": [
                [
                    {
                        "id": f.id,
                        "label": f.label,
                        "box": list(f.box),
                        "visible": f.visible,
                        "landmarks": [list(p) for p in f.landmarks],
                    }
                    for f in faces
                ]
                for faces in self.frames
            ],
        }


def ground_truth_path(video: Path) -> Path:
    """Where the ground truth of `video` lives: `demo.mp4` -> `demo.gt.json`."""
    return Path(video).with_suffix(".gt.json")


def save_ground_truth(truth: GroundTruth, path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(truth.to_json(), separators=(",", ":")))
    return path


def load_ground_truth(path: Path) -> GroundTruth:
    """Read ground truth from its JSON file or from its video's path (`demo.mp4` reads `demo.gt.json`)."""
    path = Path(path)
    if not path.name.endswith(".gt.json"):
        path = ground_truth_path(path)
    if not path.is_file():
        raise UserError(f"ground truth {path} does not exist; make the video with `python -m app.demo make`")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
        frames = tuple(
            tuple(
                GroundTruthFace(
                    id=int(f["id"]),
                    label=str(f["label"]),
                    box=tuple(float(v) for v in f["box"]),
                    visible=float(f["visible"]),
                    landmarks=tuple((float(x), float(y)) for x, y in f["landmarks"]),
                )
                for f in faces
            )
            for faces in data["frames"]
        )
        return GroundTruth(
            size=(int(data["size"][0]), int(data["size"][1])),
            fps=float(data["fps"]),
            n_frames=int(data["n_frames"]),
            seed=int(data["seed"]),
            scenario=str(data["scenario"]),
            actors=tuple(ActorInfo(**a) for a in data["actors"]),
            frames=frames,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"ground truth {path} is not valid ({exc}); regenerate it with `python -m app.demo make`"
        ) from None
