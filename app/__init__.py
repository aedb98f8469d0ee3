"""Real-time face recognition pipeline: capture, RetinaFace detection, alignment, embedding, tracking, gallery."""

__version__ = "0.1.0"
