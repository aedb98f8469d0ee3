import itertools

import numpy as np

from app.tracking.matching import box_iou, fuse_score, iou_distance, linear_assignment


def _iou_one(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_iou_known_values():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array(
        [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [2.0, 2.0, 4.0, 4.0]]
    )
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 4 / 100]])
    np.testing.assert_allclose(iou_distance(a, b), 1.0 - box_iou(a, b))


def test_iou_matrix_matches_pairwise_loop():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (12, 2))
    wh = rng.uniform(5, 60, (12, 2))
    boxes = np.hstack([xy, xy + wh])
    matrix = box_iou(boxes[:7], boxes[7:])
    for i, j in itertools.product(range(7), range(5)):
        assert abs(matrix[i, j] - _iou_one(boxes[i], boxes[7 + j])) < 1e-12


def test_iou_of_empty_sets_has_the_right_shape():
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert box_iou(np.zeros((2, 4)), np.zeros((0, 4))).shape == (2, 0)


def test_fuse_score_prefers_confident_detections():
    cost = np.array([[0.2, 0.2]])  # same IoU 0.8 with both
    fused = fuse_score(cost, np.array([0.9, 0.5]))
    np.testing.assert_allclose(fused, [[1 - 0.8 * 0.9, 1 - 0.8 * 0.5]])
    assert fused[0, 0] < fused[0, 1]


def test_assignment_is_globally_optimal_not_greedy():
    # Greedy takes (0,0)=0.1 and is left with (1,1)=0.9; the optimum is (0,1)+(1,0) = 0.5.
    cost = np.array([[0.1, 0.2], [0.3, 0.9]])
    result = linear_assignment(cost, thresh=1.0)
    assert sorted(map(tuple, result.matches.tolist())) == [(0, 1), (1, 0)]
    assert result.unmatched_rows.size == 0 and result.unmatched_cols.size == 0


def test_assignment_respects_the_gate():
    cost = np.array([[0.1, 0.95], [0.9, 0.85], [0.99, 0.2]])
    result = linear_assignment(cost, thresh=0.8)
    assert sorted(map(tuple, result.matches.tolist())) == [(0, 0), (2, 1)]
    assert result.unmatched_rows.tolist() == [1]
    assert result.unmatched_cols.tolist() == []
    nothing = linear_assignment(cost, thresh=0.05)
    assert nothing.matches.shape == (0, 2)
    assert nothing.unmatched_rows.tolist() == [0, 1, 2]


def test_assignment_of_empty_and_rectangular_matrices():
    empty = linear_assignment(np.zeros((0, 3)), thresh=0.5)
    assert empty.matches.shape == (0, 2) and empty.unmatched_cols.tolist() == [0, 1, 2]
    wide = linear_assignment(np.array([[0.3, 0.1, 0.4]]), thresh=0.5)
    assert wide.matches.tolist() == [[0, 1]]
    assert wide.unmatched_cols.tolist() == [0, 2]


def test_assignment_matches_lapjv_with_its_cost_on_random_and_tied_matrices():
    """The assignment (lapjv without its cost sum, the unmatched read from its -1 entries) is the one the
    call with the cost gave, with every pair gated exactly: square, wide and tall matrices, ties, pairs at
    the gate and entries above it."""
    import lap

    rng = np.random.default_rng(3)
    for trial in range(400):
        rows, cols = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        cost = rng.uniform(0, 1, (rows, cols))
        if trial % 3 == 0:
            cost = np.round(cost, 1)  # ties, and pairs exactly at the gate
        thresh = 0.5 if trial % 2 else 0.8
        _, x, _ = lap.lapjv(cost, extend_cost=True, cost_limit=thresh)
        want = [(r, int(c)) for r, c in enumerate(x) if c >= 0 and cost[r, c] <= thresh]
        got = linear_assignment(cost, thresh)
        assert [tuple(m) for m in got.matches.tolist()] == want
        assert got.unmatched_rows.tolist() == sorted(set(range(rows)) - {r for r, _ in want})
        assert got.unmatched_cols.tolist() == sorted(set(range(cols)) - {c for _, c in want})
