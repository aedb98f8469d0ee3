"""Where tests find the project's shared face data: `shared/` beside the repository root, read in place."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_PARTS = ("faces", "identities", "groups")  # what the tests read from it
SHARED_FACES = SHARED_DATA / "faces"
HAMILTON = SHARED_FACES / "short_hamilton_clip.mp4"
SHARED_IDENTITIES = SHARED_DATA / "identities"  # labelled photo sets, one folder per person


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
