"""The camera mosaic: grid, tile placement, aspect kept, names and notes visible, clicks mapped to tiles."""

from __future__ import annotations

import numpy as np
import pytest

from app.vision.drawing import NOTE_BGR, TEXT_BGR
from app.vision.mosaic import (
    BACKGROUND_BGR,
    EMPTY_TILE_BGR,
    canvas_size,
    compose_mosaic,
    grid_shape,
    letterbox_rect,
    tile_at,
    tile_rects,
)

RED, BLUE, GREEN = (0, 0, 255), (255, 0, 0), (0, 255, 0)


def solid(w: int, h: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.full((h, w, 3), colour, np.uint8)


def mask_of(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(colour, np.uint8), axis=2)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the True pixels."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def near(image: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - np.array(colour)) <= tol, axis=2)


@pytest.mark.parametrize(
    ("n", "shape"),
    [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (6, (2, 3)), (7, (3, 3)), (9, (3, 3)),
     (10, (3, 4)), (12, (3, 4)), (13, (4, 4)), (16, (4, 4))],
)  # fmt: skip
def test_grid_is_as_square_as_it_goes_and_never_taller_than_wide(n, shape):
    assert grid_shape(n) == shape


def test_no_tiles_is_an_error():
    with pytest.raises(ValueError, match="at least one tile"):
        grid_shape(0)


def test_tiles_split_the_canvas_in_row_major_order_with_a_gap():
    assert tile_rects(4, (202, 102)) == [
        (0, 0, 100, 50),
        (102, 0, 100, 50),
        (0, 52, 100, 50),
        (102, 52, 100, 50),
    ]
    assert tile_rects(1, (640, 360)) == [(0, 0, 640, 360)]
    # 3 tiles in a 2x2 grid: the fourth cell stays empty.
    assert tile_rects(3, (202, 102))[2] == (0, 52, 100, 50)


@pytest.mark.parametrize("n", [2, 5, 7, 11, 16])
@pytest.mark.parametrize("canvas", [(1918, 1080), (1281, 721), (333, 199)])
def test_tiles_never_overlap_and_stay_on_the_canvas(n, canvas):
    cover = np.zeros((canvas[1], canvas[0]), np.int32)
    for x, y, w, h in tile_rects(n, canvas):
        assert x >= 0 and y >= 0 and x + w <= canvas[0] and y + h <= canvas[1]
        cover[y : y + h, x : x + w] += 1
    assert cover.max() == 1
    widths = {w for _, _, w, _ in tile_rects(n, canvas)}
    assert max(widths) - min(widths) <= 1  # an even split


def test_a_click_maps_to_the_tile_under_it_and_gaps_to_none():
    rects = tile_rects(4, (202, 102))
    assert [tile_at(rects, x, y) for x, y in [(0, 0), (150, 10), (10, 60), (201, 101)]] == [0, 1, 2, 3]
    assert tile_at(rects, 100, 10) is None  # the gap between tiles 0 and 1
    assert tile_at(rects, 50, 51) is None
    assert tile_at(rects, 300, 10) is None and tile_at(rects, -1, 10) is None


def test_letterbox_keeps_aspect_and_centres():
    assert letterbox_rect((1920, 1080), (0, 0, 400, 400)) == (0, 87, 400, 225)
    assert letterbox_rect((300, 600), (100, 50, 400, 400)) == (200, 50, 200, 400)
    assert letterbox_rect((400, 300), (0, 0, 400, 300)) == (0, 0, 400, 300)


def test_canvas_fits_the_frames_aspect_without_enlarging_them():
    assert canvas_size(4, (640, 360)) == (1282, 722)  # 2x2 tiles of the frames' own size
    assert canvas_size(1, (1920, 1080)) == (1920, 1080)
    assert canvas_size(4, (1920, 1080)) == (1922, 1082)  # 960x540 tiles: 1920x1080 of pictures
    assert canvas_size(2, (1920, 1080)) == (1922, 540)
    assert canvas_size(9, (1920, 1080)) == (1924, 1084)  # 640x360 tiles
    assert canvas_size(16, (1920, 1080)) == (1926, 1086)  # 480x270 tiles
    assert canvas_size(4, (1080, 1920)) == (610, 1082)  # portrait cameras: 304x540 tiles


def test_each_picture_lands_in_its_tile_letterboxed_with_its_aspect():
    canvas_wh = (802, 402)
    rects = tile_rects(4, canvas_wh)  # four 400x200 tiles (2:1)
    wide = solid(400, 100, RED)  # 4:1 -> 400x100, bars above and below
    tall = solid(100, 200, BLUE)  # 1:2 -> 100x200, bars left and right
    same = solid(800, 400, GREEN)  # 2:1 -> fills the tile, shrunk to half
    mosaic = compose_mosaic([wide, tall, same, None], ["a", "b", "c", "d"], [None] * 4, canvas_wh)
    assert mosaic.shape == (402, 802, 3) and mosaic.dtype == np.uint8
    assert bbox(mask_of(mosaic, RED)) == (0, 50, 400, 100)
    assert bbox(mask_of(mosaic, BLUE)) == (402 + 150, 0, 100, 200)
    assert bbox(mask_of(mosaic, GREEN)) == rects[2]
    assert tuple(mosaic[10, 10]) == BACKGROUND_BGR  # the bar above the wide picture
    assert tuple(mosaic[100, 402 + 10]) == BACKGROUND_BGR  # the bar beside the tall one
    assert tuple(mosaic[201, 10]) == BACKGROUND_BGR  # the gap between rows
    x, y, w, h = rects[3]
    assert tuple(mosaic[y + 20, x + w - 20]) == EMPTY_TILE_BGR  # no picture yet: a visible dark tile


def test_each_tile_carries_its_camera_name_in_its_own_region():
    canvas_wh = (802, 402)
    rects = tile_rects(2, canvas_wh)
    tiles = [solid(400, 400, (0, 0, 0)), solid(400, 400, (0, 0, 0))]
    door = compose_mosaic(tiles, ["door", "yard"], [None, None], canvas_wh)
    gate = compose_mosaic(tiles, ["door", "gate"], [None, None], canvas_wh)
    changed = np.any(door != gate, axis=2)
    x, y, w, h = rects[1]
    assert changed.any() and not changed[:, : x - 2].any()  # only the second tile's caption differs
    cx, cy, cw, ch = bbox(changed)
    assert cx >= x and cy > y + h * 3 // 4 and cx + cw < x + w // 2  # in its bottom-left corner
    for rx, ry, rw, rh in rects:
        caption = door[ry + rh * 3 // 4 : ry + rh, rx : rx + rw // 2]
        assert near(caption, TEXT_BGR, tol=60).sum() > 20  # white text is drawn there
    assert not near(door[: rects[0][3] // 2], TEXT_BGR, tol=60).any()  # and nowhere above


def test_a_note_is_readable_on_an_empty_tile_and_over_a_dimmed_picture():
    canvas_wh = (802, 402)
    rects = tile_rects(2, canvas_wh)
    grey = solid(400, 400, (128, 128, 128))
    plain = compose_mosaic([grey, None], ["a", "b"], [None, None], canvas_wh)
    noted = compose_mosaic(
        [grey, None], ["a", "b"], ["reconnecting", "cannot open rtsp://***@cam/1"], canvas_wh
    )
    assert not near(plain, NOTE_BGR).any()
    for x, y, w, h in rects:
        middle = noted[y + h // 3 : y + 2 * h // 3, x : x + w]
        assert near(middle, NOTE_BGR).sum() > 50  # the note's amber text, in the middle of the tile
    x, y, w, h = rects[0]
    # The picture under a note is dimmed: the corners far from the text are darker than the plain picture.
    assert int(noted[y + 5, x + w - 5].max()) < 100 < int(plain[y + 5, x + w - 5].max())


def test_a_long_error_line_wraps_inside_its_tile():
    canvas_wh = (802, 402)
    note = "error: cannot open video stream rtsp://***@10.0.0.5:554/stream1 (timed out after 5 s); retrying"
    mosaic = compose_mosaic([None, None], ["a", "b"], [None, note], canvas_wh)
    x, y, w, h = tile_rects(2, canvas_wh)[1]
    amber = near(mosaic, NOTE_BGR)
    assert amber[:, x : x + w].sum() > 100 and not amber[:, : x - 2].any()  # drawn in its tile only
    _, ty, _, th = bbox(amber)
    assert th > 30  # on more than one line


def test_out_is_reused_and_checked():
    out = np.zeros((100, 200, 3), np.uint8)
    tiles = [solid(10, 10, RED), None]
    assert compose_mosaic(tiles, ["a", "b"], [None, None], (200, 100), out=out) is out
    assert mask_of(out, RED).any()
    with pytest.raises(ValueError, match=r"out must be a \(100, 200, 3\) uint8 array"):
        compose_mosaic(tiles, ["a", "b"], [None, None], (200, 100), out=np.zeros((100, 201, 3), np.uint8))
    with pytest.raises(ValueError, match="give one each"):
        compose_mosaic(tiles, ["a"], [None, None], (200, 100))


def test_a_grey_picture_is_shown_in_colour_space():
    mosaic = compose_mosaic([np.full((50, 100), 77, np.uint8)], ["a"], [None], (100, 50))
    assert tuple(mosaic[5, 50]) == (77, 77, 77)
