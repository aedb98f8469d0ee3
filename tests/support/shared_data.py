"""Where tests find the project's shared face data: `shared/` beside the repository root, read in place."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_PARTS = ("faces", "identities", "groups")  # what the tests read from it
SHARED_FACES = SHARED_DATA / "faces"
HAMILTON = SHARED_FACES / "short_hamilton_clip.mp4"
SHARED_IDENTITIES = SHARED_DATA / "identities"  # labelled photo sets, one folder per person
KNN_TRAIN = SHARED_FACES / "knn_examples" / "train"  # a few photos per person, one folder each
# The demo images folder as `python -m app.models fetch` lays it out, built from the same files.
DEMO_FILES = {
    "obama.jpg": KNN_TRAIN / "obama" / "obama.jpg",
    "obama2.jpg": KNN_TRAIN / "obama" / "obama2.jpg",
    "obama3.jpg": SHARED_FACES / "edge" / "obama3.jpg",
    "biden.jpg": KNN_TRAIN / "biden" / "biden.jpg",
    "obama_partial_face.jpg": SHARED_FACES / "edge" / "obama_partial_face.jpg",
}


def missing_shared_data() -> str | None:
    """Why the shared data cannot be used (one line naming the path and the fix), or None when it can."""
    absent = [part for part in SHARED_PARTS if not (SHARED_DATA / part).is_dir()]
    if not absent:
        return None
    lacking = ", ".join(part + "/" for part in absent)
    return (
        f"the shared test data {SHARED_DATA} lacks {lacking}: the tests read real faces from it; "
        "put the shared data set there (beside the repository) and run the tests again"
    )


def hamilton_frames(start: int, stop: int, size: tuple[int, int] | None = None) -> list:
    """Frames start..stop-1 of the Hamilton clip as BGR arrays (resized to `size`, (w, h), when given)."""
    import cv2

    cap = cv2.VideoCapture(str(HAMILTON))
    frames = []
    for index in range(stop):
        ok, image = cap.read()
        assert ok, f"{HAMILTON} has no frame {index}"
        if index >= start:
            frames.append(image if size is None else cv2.resize(image, size))
    cap.release()
    return frames
