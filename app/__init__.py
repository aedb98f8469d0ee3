"""Real-time face recognition pipeline: capture, RetinaFace, alignment, embedding, tracking, gallery."""

__version__ = "0.1.0"
