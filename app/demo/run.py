"""The README's main job: enroll the demo people, make the demo video, run the pipeline on it.

Everything comes from what `python -m app.models fetch` put in place (default models, the demo photos from
face_recognition's sdist), so it runs on a fresh machine with no camera. The demo gallery lives in its own
folder (`data/demo/gallery`) so it never mixes with the user's gallery. With a display the pipeline opens
its window; without one it runs headless, writes the annotated video and prints the summary.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.config import load_settings
from app.demo.scenario import demo_sets, standard_scenario
from app.demo.video import write_video
from app.gallery.factory import open_gallery
from app.models.paths import REPO_ROOT
from app.recognition.analyzer import FaceAnalyzer
from app.recognition.enrollment import enroll
from app.stages.gui import gui_unavailable_reason

log = logging.getLogger(__name__)

DEMO_DIR = REPO_ROOT / "data" / "demo"
DEMO_VIDEO = DEMO_DIR / "demo.mp4"
DEMO_GALLERY = DEMO_DIR / "gallery"
DEMO_OUTPUT = DEMO_DIR / "demo_annotated.mp4"
DEMO_EVENTS = DEMO_DIR / "demo_events.jsonl"


def prepare_demo(video: Path = DEMO_VIDEO, gallery_dir: Path = DEMO_GALLERY) -> None:
    """Make the demo video and enroll its people, unless already done."""
    sets = demo_sets()
    if not video.is_file():
        print(f"demo: rendering {video.relative_to(REPO_ROOT) if video.is_relative_to(REPO_ROOT) else video}")
        write_video(standard_scenario(sets.video), video)
    settings = load_settings({"qdrant_path": gallery_dir}, env_file=None)
    analyzer = FaceAnalyzer(settings)
    gallery = open_gallery(settings, analyzer.spec)
    try:
        enrolled = gallery.list()
        for name, photos in sets.enroll.items():
            if name not in enrolled:
                result = enroll(analyzer, gallery, name, photos)
                print(f"demo: enrolled {name} from {', '.join(p.name for p in result.sources)}")
    finally:
        gallery.close()


def demo_arguments(extra: Sequence[str], headless: bool) -> list[str]:
    """Pipeline flags for the demo; the user's extra flags come last so they win."""
    # --overwrite: the demo's own outputs are replaced on every run
    args = ["--source", str(DEMO_VIDEO), "--gallery", str(DEMO_GALLERY), "--events", str(DEMO_EVENTS)]
    args.append("--overwrite")
    if headless:
        args += ["--no-gui", "--output", str(DEMO_OUTPUT)]
    return args + list(extra)


def closing_note(gallery_dir: Path = DEMO_GALLERY) -> str:
    """Where the demo's people are and how to run on your own video: the demo's gallery is not the one
    `python -m app.main` uses by default."""
    shown = gallery_dir.relative_to(REPO_ROOT) if gallery_dir.is_relative_to(REPO_ROOT) else gallery_dir
    default_gallery = load_settings(env_file=None).qdrant_path
    return (
        f"demo: its people are in the demo gallery {shown} (python -m app.enroll --gallery {shown} list); "
        f"your own run uses {default_gallery}: python -m app.enroll add NAME PHOTO..., then "
        "python -m app.main --source YOUR_VIDEO"
    )


def run_demo(extra: Sequence[str] = ()) -> int:
    from app.main import main as pipeline_main

    prepare_demo()
    headless = "--no-gui" in extra or gui_unavailable_reason() is not None
    if headless:
        print(f"demo: no window here; writing {DEMO_OUTPUT.relative_to(REPO_ROOT)} and the summary")
    code = pipeline_main(demo_arguments(extra, headless))
    # stderr: the last line of stdout stays the pipeline's JSON summary
    print(closing_note(), file=sys.stderr)
    return code
