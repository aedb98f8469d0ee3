import numpy as np
import pytest

from app.tracking.kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah


def test_box_conversions_round_trip():
    boxes = np.array([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 1.0, 2.0]])
    xyah = xyxy_to_xyah(boxes)
    np.testing.assert_allclose(xyah[0], [30.0, 60.0, 0.5, 80.0])
    np.testing.assert_allclose(xyah_to_xyxy(xyah), boxes)


def test_initiate_starts_at_the_measurement_at_rest():
    kf = KalmanBoxFilter()
    mean, cov = kf.initiate(np.array([[100.0, 50.0, 0.8, 40.0]]))
    np.testing.assert_allclose(mean[0, :4], [100.0, 50.0, 0.8, 40.0])
    np.testing.assert_allclose(mean[0, 4:], 0.0)
    assert cov.shape == (1, 8, 8)
    np.testing.assert_allclose(cov[0], cov[0].T)
    assert np.all(np.linalg.eigvalsh(cov[0]) > 0)
    # Position uncertainty scales with the box height: a 4x larger face is 16x less certain in pixels^2.
    _, big = kf.initiate(np.array([[100.0, 50.0, 0.8, 160.0]]))
    assert big[0, 0, 0] == pytest.approx(16 * cov[0, 0, 0])


def test_learns_constant_velocity_and_predicts_ahead():
    kf = KalmanBoxFilter()
    velocity = np.array([4.0, -2.0, 0.0, 0.5])
    start = np.array([100.0, 200.0, 0.8, 60.0])
    mean, cov = kf.initiate(start[None])
    for step in range(1, 30):
        mean, cov = kf.predict(mean, cov)
        mean, cov = kf.update(mean, cov, (start + step * velocity)[None])
    np.testing.assert_allclose(mean[0, 4:], velocity, atol=0.05)
    predicted, _ = kf.predict(mean, cov)
    np.testing.assert_allclose(predicted[0, :4], start + 30 * velocity, atol=0.2)


def test_predict_grows_and_update_shrinks_uncertainty():
    kf = KalmanBoxFilter()
    mean, cov = kf.initiate(np.array([[0.0, 0.0, 1.0, 50.0]]))
    predicted_mean, predicted_cov = kf.predict(mean, cov)
    assert np.trace(predicted_cov[0]) > np.trace(cov[0])
    _, updated_cov = kf.update(predicted_mean, predicted_cov, np.array([[1.0, 1.0, 1.0, 50.0]]))
    assert np.trace(updated_cov[0, :4, :4]) < np.trace(predicted_cov[0, :4, :4])
    np.testing.assert_allclose(updated_cov[0], updated_cov[0].T, atol=1e-9)


def test_batched_calls_equal_one_track_at_a_time():
    rng = np.random.default_rng(0)
    kf = KalmanBoxFilter()
    measurements = np.column_stack(
        [rng.uniform(0, 600, 5), rng.uniform(0, 400, 5), rng.uniform(0.6, 1.0, 5), rng.uniform(20, 200, 5)]
    )
    mean, cov = kf.initiate(measurements)
    mean, cov = kf.predict(mean, cov)
    observed = measurements + rng.normal(0, 3, measurements.shape)
    batch_mean, batch_cov = kf.update(mean, cov, observed)
    for i in range(5):
        one_mean, one_cov = kf.update(mean[i : i + 1], cov[i : i + 1], observed[i : i + 1])
        np.testing.assert_allclose(batch_mean[i], one_mean[0])
        np.testing.assert_allclose(batch_cov[i], one_cov[0])


def test_empty_batches_pass_through():
    kf = KalmanBoxFilter()
    mean, cov = kf.initiate(np.zeros((0, 4)))
    assert mean.shape == (0, 8) and cov.shape == (0, 8, 8)
    mean, cov = kf.predict(mean, cov)
    mean, cov = kf.update(mean, cov, np.zeros((0, 4)))
    assert mean.shape == (0, 8)
