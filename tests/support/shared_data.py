"""Where tests find the project's shared face data: `shared/` beside the repository root, read in place."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_FACES = REPO.parent / "shared" / "data" / "faces"
HAMILTON = SHARED_FACES / "short_hamilton_clip.mp4"
SHARED_IDENTITIES = (
    REPO.parent / "shared" / "data" / "identities"
)  # labelled photo sets, one folder per person
