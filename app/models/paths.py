"""Where the default models, demo images and the download cache live."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"
DEFAULT_DETECTOR = CHECKPOINTS_DIR / "retinaface_mnet025.onnx"
DEFAULT_EMBEDDER = CHECKPOINTS_DIR / "dlib_resnet.onnx"
DEMO_IMAGES_DIR = REPO_ROOT / "data" / "demo" / "images"

CACHE_DIR_ENV = "MODELS_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/face-pipeline/downloads")


def cache_dir() -> Path:
    """The folder that keeps downloaded source packages (``$MODELS_CACHE_DIR`` wins over the default)."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(configured or DEFAULT_CACHE_DIR).expanduser()
