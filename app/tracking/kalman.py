"""Constant-velocity Kalman filter for boxes, batched over tracks.

State per track: (cx, cy, a, h, vcx, vcy, va, vh) with a = width / height. The measurement is (cx, cy, a, h).
Noise scales with the box height (as in SORT/DeepSORT/ByteTrack), so a 20 px face and a 400 px face are
tracked with the same relative uncertainty. Every method takes stacked arrays: means (N, 8), covariances
(N, 8, 8), measurements (N, 4), so a frame's tracks are predicted or updated in one numpy call.
"""

from __future__ import annotations

import numpy as np

STATE_DIM = 8
MEASURE_DIM = 4


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, aspect w/h, height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    out = np.empty((boxes.shape[0], 4))  # filled column by column: np.stack costs more than the arithmetic
    out[:, 0] = boxes[:, 0] + w / 2
    out[:, 1] = boxes[:, 1] + h / 2
    out[:, 2] = w / h
    out[:, 3] = h
    return out


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N, >=4) centre x, centre y, aspect, height -> (N, 4) x1, y1, x2, y2."""
    xyah = np.asarray(xyah, dtype=np.float64)
    xyah = xyah.reshape(-1, xyah.shape[-1])
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    out = np.empty((xyah.shape[0], 4))
    out[:, 0] = xyah[:, 0] - w / 2
    out[:, 1] = xyah[:, 1] - h / 2
    out[:, 2] = xyah[:, 0] + w / 2
    out[:, 3] = xyah[:, 1] + h / 2
    return out


def _diagonal(matrices: np.ndarray) -> np.ndarray:
    """A writable (N, d) view of the diagonals of contiguous (N, d, d) matrices: a strided slice, where
    fancy indexing would gather and scatter through index arrays."""
    n, d, _ = matrices.shape
    return matrices.reshape(n, d * d)[:, :: d + 1]


class KalmanBoxFilter:
    """Linear Kalman filter with a constant-velocity motion model on (cx, cy, a, h)."""

    def __init__(self, std_weight_position: float = 1.0 / 20, std_weight_velocity: float = 1.0 / 160) -> None:
        self.std_weight_position = std_weight_position
        self.std_weight_velocity = std_weight_velocity
        self.motion = np.eye(STATE_DIM)
        self.motion[:MEASURE_DIM, MEASURE_DIM:] = np.eye(MEASURE_DIM)  # one frame per step
        # The measurement is the first four state entries, so H @ x is x[:4] and H P H^T is P[:4, :4].
        self._weights: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}  # _std's, as arrays

    def _std(self, heights: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
        """Per-track standard deviations: weight * height, except aspect terms, which are absolute."""
        known = self._weights.get(weights)
        if known is None:
            w = np.asarray(weights)
            known = self._weights[weights] = (w, w[2::4].copy())  # aspect: entries 2 (and 6) of each 4
        w, aspect = known
        out: np.ndarray = heights[:, None] * w
        out[:, 2::4] = aspect  # a slice, where a boolean mask on both sides cost two gathers a call
        return out

    @staticmethod
    def _diag(variances: np.ndarray) -> np.ndarray:
        n, d = variances.shape
        out = np.zeros((n, d, d))
        _diagonal(out)[...] = variances
        return out

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from (N, 4) xyah measurements: zero velocity, broad velocity uncertainty."""
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASURE_DIM)
        mean = np.concatenate([measurements, np.zeros_like(measurements)], axis=1)
        p, v = self.std_weight_position, self.std_weight_velocity
        std = self._std(measurements[:, 3], (2 * p, 2 * p, 1e-2, 2 * p, 10 * v, 10 * v, 1e-5, 10 * v))
        return mean, self._diag(std**2)

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead for all tracks at once."""
        if mean.shape[0] == 0:
            return mean.copy(), covariance.copy()
        p, v = self.std_weight_position, self.std_weight_velocity
        std = self._std(mean[:, 3], (p, p, 1e-2, p, v, v, 1e-5, v))
        # F x and F P F^T with F = [[I, I], [0, I]] written out: each entry of the products is a sum of two
        # terms (the others are exact zeros), so the slices' additions give the matmuls' values bit for bit
        # at a fraction of the cost of a batched (N, 8, 8) matmul (the tracking lane runs this every frame).
        new_mean = mean.copy()
        new_mean[:, :MEASURE_DIM] += mean[:, MEASURE_DIM:]
        rows = covariance.copy()
        rows[:, :MEASURE_DIM, :] += covariance[:, MEASURE_DIM:, :]  # F P
        new_cov = rows.copy()
        new_cov[:, :, :MEASURE_DIM] += rows[:, :, MEASURE_DIM:]  # (F P) F^T
        _diagonal(new_cov)[...] += std**2  # + Q, a diagonal (adding its zeros changes nothing)
        return new_mean, new_cov

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """State distribution -> measurement distribution (adds measurement noise)."""
        p = self.std_weight_position
        std = self._std(mean[:, 3], (p, p, 1e-1, p))
        projected = covariance[:, :MEASURE_DIM, :MEASURE_DIM].copy()
        _diagonal(projected)[...] += std**2  # + R, a diagonal
        return mean[:, :MEASURE_DIM].copy(), projected

    def update(
        self, mean: np.ndarray, covariance: np.ndarray, measurements: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct N tracks with their N matched xyah measurements."""
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASURE_DIM)
        if mean.shape[0] == 0:
            return mean.copy(), covariance.copy()
        projected_mean, projected_cov = self.project(mean, covariance)
        cross = covariance[:, :, :MEASURE_DIM]  # P H^T, (N, 8, 4)
        # K = P H^T S^-1; S is symmetric positive definite, so solve S K^T = H P^T instead of inverting.
        gain = np.linalg.solve(projected_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
        innovation = measurements - projected_mean
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = covariance - gain @ projected_cov @ gain.transpose(0, 2, 1)
        return new_mean, new_cov
