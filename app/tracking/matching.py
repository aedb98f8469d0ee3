"""Association costs and the gated Hungarian assignment used by ByteTrack."""

from __future__ import annotations

from dataclasses import dataclass

import lap
import numpy as np


@dataclass(frozen=True)
class Assignment:
    """Result of one association: matched (row, col) pairs and the indices left over on each side."""

    matches: np.ndarray  # (K, 2) int: row index, column index
    unmatched_rows: np.ndarray  # (R,) int
    unmatched_cols: np.ndarray  # (C,) int


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1, y1, x2, y2 boxes -> (N, M)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    # np.maximum(x, 0) rather than np.clip(x, 0, None): the same values, without clip's dispatch (this
    # runs several times a frame per camera; the tracking lanes' CPU is what limits a GPU host).
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area_a = np.maximum(ax2 - ax1, 0.0) * np.maximum(ay2 - ay1, 0.0)
    area_b = np.maximum(bx2 - bx1, 0.0) * np.maximum(by2 - by1, 0.0)
    inter = np.minimum(ax2, bx2)
    inter -= np.maximum(ax1, bx1)
    np.maximum(inter, 0.0, out=inter)
    inter_h = np.minimum(ay2, by2)
    inter_h -= np.maximum(ay1, by1)
    np.maximum(inter_h, 0.0, out=inter_h)
    inter *= inter_h
    union = area_a + area_b
    union -= inter
    iou: np.ndarray = inter / np.maximum(union, 1e-12)
    iou[~(union > 0)] = 0.0
    return iou


def iou_distance(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """1 - IoU, the cost of pairing track boxes (rows) with detection boxes (columns)."""
    return 1.0 - box_iou(boxes_a, boxes_b)


def fuse_score(cost: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ByteTrack's score fusion: cost 1 - IoU * score, so confident detections are preferred."""
    if cost.size == 0:
        return cost
    return 1.0 - (1.0 - cost) * np.asarray(scores, dtype=np.float64)[None, :]


def linear_assignment(cost: np.ndarray, thresh: float) -> Assignment:
    """Minimum-cost matching (Jonker-Volgenant) where no matched pair may cost more than `thresh`."""
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return Assignment(np.empty((0, 2), dtype=int), np.arange(rows), np.arange(cols))
    # extend_cost pads the matrix to square; cost_limit lets a row stay unmatched rather than take a pair
    # costing more than the gate, which is the gate of the paper. return_cost=False: the same assignment
    # without lap summing its cost afterwards (two thirds of the call on a frame's 10 x 10 matrix).
    row_to_col, col_to_row = lap.lapjv(
        np.ascontiguousarray(cost, dtype=np.float64), extend_cost=True, cost_limit=thresh, return_cost=False
    )
    # ndarray.nonzero() rather than np.flatnonzero (the same indices of a 1-D array, without its wrappers):
    # this runs on every frame of every camera's tracking lane.
    matched_rows = (row_to_col >= 0).nonzero()[0]
    matched_cols = row_to_col[matched_rows]
    # lapjv's limit is exclusive only up to rounding; enforce the gate exactly.
    keep = cost[matched_rows, matched_cols] <= thresh
    matches = np.empty((matched_rows.shape[0], 2), dtype=int)
    if keep.all():  # (every pair passes: the unmatched are lapjv's own -1 entries on each side)
        matches[:, 0] = matched_rows
        matches[:, 1] = matched_cols
        return Assignment(matches, (row_to_col < 0).nonzero()[0], (col_to_row < 0).nonzero()[0])
    matched_rows, matched_cols = matched_rows[keep], matched_cols[keep]
    matches = matches[: matched_rows.shape[0]]
    matches[:, 0] = matched_rows
    matches[:, 1] = matched_cols
    row_free = np.ones(rows, dtype=bool)
    row_free[matched_rows] = False
    col_free = np.ones(cols, dtype=bool)
    col_free[matched_cols] = False
    return Assignment(matches, row_free.nonzero()[0], col_free.nonzero()[0])
