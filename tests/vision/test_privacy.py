"""Blurring faces that are not known."""

from __future__ import annotations

import numpy as np

from app.vision.privacy import blur_faces


def test_faces_not_known_are_pixelated_and_known_ones_left_alone():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    before = image.copy()
    boxes = np.array([[20, 20, 80, 80], [120, 20, 180, 80], [220, 20, 280, 80]], np.float32)
    assert blur_faces(image, boxes, ["known", "unknown", "pending"]) == 2
    assert np.array_equal(image[20:80, 20:80], before[20:80, 20:80])
    for x1 in (120, 220):
        region = image[20:80, x1 : x1 + 60].astype(float)
        assert region.std() < before[20:80, x1 : x1 + 60].astype(float).std() / 2


def test_boxes_outside_the_frame_are_clipped():
    image = np.zeros((50, 50, 3), np.uint8)
    assert blur_faces(image, np.array([[-30, -30, 10, 10], [60, 60, 90, 90]]), ["unknown", "unknown"]) == 1
