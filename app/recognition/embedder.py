"""The configured embedder: its spec with the similarity threshold the settings ask for, and its model.

Every user of the embedder (the pipeline's embedding worker, tracking's spec-only view, enrolment and
evaluation through `FaceAnalyzer`, the face library) gets it here, so FACEPIPE_MATCH_THRESHOLD overrides the
embedder's measured threshold the same way everywhere.
"""

from __future__ import annotations

import dataclasses

from app.config import Settings
from app.inference.backend import load_model
from app.inference.interface import Model
from app.inference.spec import EmbedderSpec, embedder_spec_for


def configured_spec(settings: Settings, model: Model | None = None) -> EmbedderSpec:
    """The spec of `settings.embedder_model` (kind `settings.embedder`), its threshold replaced by
    `settings.match_threshold` when that is set. Pass the loaded `model` to read its shapes from it rather
    than from the ONNX file (see `embedder_spec_for`)."""
    spec = embedder_spec_for(settings.embedder_model, settings.embedder, model)
    if settings.match_threshold is not None:
        spec = dataclasses.replace(spec, threshold=float(settings.match_threshold))
    return spec


def load_embedder(settings: Settings, threads: int | None = None) -> tuple[Model, EmbedderSpec]:
    """The embedder model on `settings.backend` (`threads` per session, default `settings.threads`) and its
    configured spec."""
    model = load_model(
        settings.embedder_model, settings.backend, settings.threads if threads is None else threads
    )
    return model, configured_spec(settings, model)
