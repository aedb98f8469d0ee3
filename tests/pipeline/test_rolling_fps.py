"""FPS over the last second, from an injected clock: what the window shows as the current rate."""

from __future__ import annotations

import pytest

from app.pipeline.metrics import RollingFps


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_steady_rate_reads_the_same_from_the_second_frame_on():
    clock = Clock()
    fps = RollingFps(clock=clock)
    assert fps.tick() == 0.0  # one frame: no rate yet
    seen = []
    for _ in range(90):  # 3 s at 30 FPS
        clock.now += 1 / 30
        seen.append(fps.tick())
    assert seen == pytest.approx([30.0] * 90, abs=0.01)


def test_rate_follows_a_slowdown_within_one_second_not_since_the_start():
    clock = Clock()
    fps = RollingFps(clock=clock)
    for _ in range(300):  # 10 s at 30 FPS
        fps.tick()
        clock.now += 1 / 30
    for _ in range(20):  # then 2 s at 10 FPS
        fps.tick()
        clock.now += 0.1
    assert fps.rate(clock.now - 0.1) == pytest.approx(10.0)  # a since-start figure would still say ~27


def test_no_frame_for_a_window_reads_zero():
    clock = Clock()
    fps = RollingFps(window_s=0.5, clock=clock)
    fps.tick()
    clock.now += 0.1
    assert fps.tick() == pytest.approx(10.0)
    clock.now += 0.6
    assert fps.rate() == 0.0


def test_explicit_times_need_no_clock():
    fps = RollingFps(window_s=1.0)
    for i in range(11):
        rate = fps.tick(now=5.0 + i * 0.25)  # 4 FPS for 2.5 s
    assert rate == pytest.approx(4.0)
    with pytest.raises(ValueError, match="positive"):
        RollingFps(window_s=0)
