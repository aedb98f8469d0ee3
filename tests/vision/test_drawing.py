"""Readable annotations: text sized to the frame, labels above the stats panel, the legend, notes that fit."""

from __future__ import annotations

import cv2
import numpy as np

from app.vision.drawing import (
    FONT,
    KNOWN_BGR,
    NOTE_BGR,
    PENDING_BGR,
    TEXT_BGR,
    UNKNOWN_BGR,
    annotate_frame,
    draw_faces,
    draw_legend,
    draw_note,
    draw_overlay,
    fit_lines,
    shade,
    text_scale,
)

STATS = ["29.9 FPS   latency 40 ms   faces 1", "ms: capture 3  detect 15  post 1", "frame 12  t=0.40s"]


def near(image: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - np.array(colour)) <= tol, axis=2)


def test_text_grows_with_the_frame_and_a_narrow_frame_gets_smaller_text():
    assert text_scale(360) == (0.4, 1)  # the floor: still readable at 360p
    assert text_scale(720)[0] == 0.6 and text_scale(2160)[0] > text_scale(1080)[0] > 0.6
    assert text_scale(1920, 1080)[0] < text_scale(1920)[0]  # a portrait frame: sized by its width
    assert text_scale(1080, 1920) == text_scale(1080)


def test_a_face_label_under_the_stats_panel_stays_fully_visible():
    image = np.full((720, 1280, 3), 128, np.uint8)
    box = np.array([[20, 40, 120, 160]], np.float32)  # a face in the top-left corner, under the panel
    annotate_frame(image, box, [7], ["Ada"], ["known"], [0.61], STATS)
    panel = image[:90, :400]
    assert near(panel, KNOWN_BGR, tol=0).sum() > 200  # the label's green, not darkened by the panel
    # The old order (faces, then the panel) would hide it: the green under the panel is darkened.
    hidden = np.full((720, 1280, 3), 128, np.uint8)
    draw_faces(hidden, box, [7], ["Ada"], ["known"], [0.61])
    draw_overlay(hidden, STATS)
    assert near(hidden[:20, :400], KNOWN_BGR, tol=0).sum() == 0
    assert int(image[5, 200].max()) < 128  # the panel is still there, darkening the scene


def test_legend_shows_the_three_colours_and_the_keys_in_the_bottom_right_corner():
    image = np.full((720, 1280, 3), 128, np.uint8)
    draw_legend(image, ("q quit", "1-4 camera", "0 mosaic"))
    changed = np.any(image != 128, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() > 720 * 3 // 4 and xs.min() > 1280 // 2  # only the corner
    assert ys.max() == 719 and xs.max() == 1279
    corner = image[ys.min() :, xs.min() :]
    for colour in (KNOWN_BGR, UNKNOWN_BGR, PENDING_BGR):
        assert near(corner, colour, tol=0).sum() > 25, colour  # a swatch of each status colour
    assert near(corner, TEXT_BGR, tol=60).sum() > 100  # the words
    without_keys = np.full((720, 1280, 3), 128, np.uint8)
    draw_legend(without_keys, ())
    assert np.any(without_keys != 128, axis=2).sum() < changed.sum()  # one line shorter


def test_fit_lines_wraps_at_spaces_and_cuts_what_cannot_fit():
    scale, thickness = 0.5, 1
    text = "error: cannot open video stream rtsp://***@10.0.0.5:554/stream1 (timed out)"
    lines = fit_lines(text, 200, scale, thickness)
    assert len(lines) > 1 and "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(cv2.getTextSize(line, FONT, scale, thickness)[0][0] <= 200 for line in lines)
    word = fit_lines("x" * 30, 100, scale, thickness)
    assert len(word) > 1 and "".join(word) == "x" * 30  # a long word breaks across lines, nothing lost
    assert all(cv2.getTextSize(line, FONT, scale, thickness)[0][0] <= 100 for line in word)
    many = fit_lines(" ".join(["word"] * 100), 100, scale, thickness, max_lines=3)
    assert len(many) == 3 and many[-1].endswith("...")
    assert fit_lines("", 100, scale, thickness) == []


def test_note_is_centred_on_a_dark_band():
    image = np.full((360, 640, 3), 200, np.uint8)
    draw_note(image, "reconnecting")
    amber = near(image, NOTE_BGR)
    ys, xs = np.nonzero(amber)
    assert amber.sum() > 50
    assert abs((ys.min() + ys.max()) / 2 - 180) < 20 and abs((xs.min() + xs.max()) / 2 - 320) < 20
    assert int(image[180, 5].max()) < 100  # the band behind the text is dark
    assert tuple(image[5, 5]) == (200, 200, 200)  # the rest of the frame is untouched


def test_shade_darkens_towards_the_panel_colour_in_place():
    image = np.full((10, 10, 3), (10, 100, 250), np.uint8)
    shade(image[2:4, 2:4], keep=0.5)
    assert tuple(image[3, 3]) == (15, 60, 135) and tuple(image[0, 0]) == (10, 100, 250)
