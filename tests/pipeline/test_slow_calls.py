"""SLOW_CALL_MS: a stage call running past the threshold is logged once, with where it is, then how long."""

from __future__ import annotations

import logging
import sys
import threading

from app.pipeline.messages import EndOfStream
from app.pipeline.slow_calls import SlowCallWatch, where
from tests.pipeline.test_stage_runner import Brightness, Harness, ref
from tests.support.waiting import GUARD_S

LOGGER = "app.pipeline.slow_calls"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def parked_stack():
    """A real frame of a function that is 'running': the stack the watch would read from the stage thread."""

    def deep_in_the_stage():
        return sys._getframe()

    return deep_in_the_stage()


def test_a_call_past_the_threshold_is_logged_once_with_its_stack_then_its_duration(caplog):
    clock, frame = Clock(), parked_stack()
    watch = SlowCallWatch("recognize", 0.05, thread_id=7, clock=clock, frames=lambda: {7: frame})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not watch.check()  # nothing running
        watch.begin("process")
        clock.now += 0.049
        assert not watch.check()  # under the threshold
        clock.now += 0.081
        assert watch.check()
        clock.now += 0.2
        assert not watch.check()  # once a call
        watch.end()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and watch.reported == 1
    assert lines[0].startswith("slow call: recognize process() has run 130 ms (SLOW_CALL_MS 50); at ")
    assert "tests/pipeline/test_slow_calls.py" in lines[0] and lines[0].endswith("deep_in_the_stage")
    assert lines[1] == "slow call: recognize process() took 330 ms in all"


def test_fast_calls_log_nothing_and_each_call_is_judged_alone(caplog):
    clock = Clock()
    watch = SlowCallWatch("detect", 0.05, thread_id=7, clock=clock, frames=lambda: {7: parked_stack()})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            watch.begin("process_batch")
            clock.now += 0.03
            assert not watch.check()
            watch.end()
            clock.now += 1.0  # idle between calls is not a call
            assert not watch.check()
    assert caplog.records == [] and watch.reported == 0


def test_where_names_package_files_from_the_package_folder():
    line = where(parked_stack(), depth=2)
    assert line.count(" > ") == 1
    first, last = line.split(" > ")
    assert first.startswith("tests/pipeline/test_slow_calls.py:") and first.endswith(" parked_stack")
    assert last.startswith("tests/pipeline/test_slow_calls.py:") and last.endswith(" deep_in_the_stage")
    assert where(None) == "(no stack)"


class Stalling(Brightness):
    """Its third frame's process() stays until the watch has logged it (no sleep, no wall-clock bound)."""

    def __init__(self, logged: threading.Event) -> None:
        super().__init__(max_batch=1)
        self.logged = logged

    def process_batch(self, msgs):
        if msgs[0].meta.frame_index == 2:
            self.wait_in_the_stage()
        return super().process_batch(msgs)

    def wait_in_the_stage(self) -> None:
        assert self.logged.wait(GUARD_S), "the watch never logged the stalled call"


class Flag(logging.Handler):
    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "has run" in record.getMessage():
            self.event.set()


def test_the_stage_loop_watches_its_calls_and_logs_where_a_stall_is(caplog):
    logged = threading.Event()
    handler = Flag(logged)
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        h = Harness()
        stage = Stalling(logged)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            thread, result = h.run(stage, slow_call_s=0.005)
            for i in range(4):
                h.inbox.put(ref(i))
            h.inbox.put(EndOfStream("end of file", 4))
            thread.join(GUARD_S)
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
    assert result == [0] and len(h.outputs()) == 5
    stalls = [r.getMessage() for r in caplog.records if "has run" in r.getMessage()]
    # Only the stalled call: the stack reaches into the stage (then the Event's own wait in threading.py).
    assert len(stalls) == 1
    assert "tests/pipeline/test_slow_calls.py:" in stalls[0] and " wait_in_the_stage > " in stalls[0]
    assert stalls[0].startswith("slow call: brightness process() has run ")
    totals = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" ms in all")]
    assert len(totals) == 1 and totals[0].startswith("slow call: brightness process() took ")


def test_off_by_default_no_watch_thread():
    h = Harness()
    stage = Brightness()
    before = {t.name for t in threading.enumerate()}
    thread, result = h.run(stage)
    h.inbox.put(ref(0))
    h.inbox.put(EndOfStream("end of file", 1))
    thread.join(GUARD_S)
    assert result == [0]
    assert not any(t.name.startswith("slow-calls-") for t in threading.enumerate() if t.name not in before)
