"""RateLimit in one process: validation, GCRA spacing and bursts, deadlines, pauses, pickling, files."""

from __future__ import annotations

import gc
import os
import pickle
import stat
import threading
import time
from typing import Any

import pytest
from _pacing_workers import LIMIT, limited_get
from hypothesis import given
from hypothesis import strategies as st

import amorsize
from amorsize import _pace_state
from amorsize.errors import AmorsizeError, InvalidArgumentError, InvalidTypeError, RateLimitTimeoutError
from amorsize.pacing import Limited, Permit, RateLimit


class FakeClock:
    """A clock that only moves when something sleeps on it (picklable: module level)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fake_limit(calls: int, per: float = 1.0, **kwargs: Any) -> tuple[RateLimit, FakeClock]:
    clock = FakeClock()
    return RateLimit(calls, per, clock=clock, sleep=clock.sleep, **kwargs), clock


def state_dirs() -> set[str]:
    root = _pace_state.state_root()
    return {n for n in os.listdir(root) if n.startswith(_pace_state.DIR_PREFIX)}


def windows_ok(starts: list[float], per: float, most: int) -> bool:
    """No half-open window of ``per`` seconds holds more than ``most`` of ``starts``."""
    starts = sorted(starts)
    low = 0
    for high, t in enumerate(starts):
        while t - starts[low] >= per - 1e-9:
            low += 1
        if high - low + 1 > most:
            return False
    return True


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "shown", "error"),
    [
        ({"calls": 0}, "calls=0", InvalidArgumentError),
        ({"calls": 2.5}, "calls=2.5", InvalidArgumentError),
        ({"calls": True}, "calls=True", InvalidArgumentError),
        ({"calls": 5, "per": 0}, "per=0", InvalidArgumentError),
        ({"calls": 5, "per": float("inf")}, "per=inf", InvalidArgumentError),
        ({"calls": 5, "burst": 0}, "burst=0", InvalidArgumentError),
        ({"calls": 5, "max_concurrent": -1}, "max_concurrent=-1", InvalidArgumentError),
        ({"calls": 5, "clock": 3}, "clock=3", InvalidTypeError),
        ({"calls": 5, "sleep": None}, "sleep=None", InvalidTypeError),
    ],
)
def test_invalid_arguments_name_the_argument_and_value(kwargs: Any, shown: str, error: type) -> None:
    with pytest.raises(error) as info:
        RateLimit(**kwargs)
    assert shown in str(info.value)
    assert isinstance(info.value, AmorsizeError)


def test_exported_from_the_package() -> None:
    assert amorsize.RateLimit is RateLimit
    assert "RateLimit" in amorsize.__all__
    assert issubclass(RateLimitTimeoutError, TimeoutError)


# --- the rate ---------------------------------------------------------------------------


def test_calls_are_spaced_evenly_without_burst() -> None:
    limit, clock = fake_limit(10)
    starts = []
    for _ in range(5):
        limit.acquire()
        starts.append(clock.now)
    assert starts == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])
    limit.close()


def test_burst_starts_together_after_idle_then_paces() -> None:
    limit, clock = fake_limit(10, burst=3)
    starts = []
    for _ in range(5):
        limit.acquire()
        starts.append(clock.now)
    assert starts == pytest.approx([1000.0, 1000.0, 1000.0, 1000.1, 1000.2])
    clock.now += 10  # idle: the burst is available again
    before = clock.now
    for _ in range(3):
        limit.acquire()
    assert clock.now == pytest.approx(before)
    limit.close()


@given(
    calls=st.integers(1, 20),
    per=st.sampled_from([0.5, 1.0, 2.0]),
    burst=st.one_of(st.none(), st.integers(1, 5)),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=60),
)
def test_no_window_holds_more_than_calls_plus_burst(
    calls: int, per: float, burst: int | None, gaps: list[float]
) -> None:
    limit, clock = fake_limit(calls, per, burst=burst)
    starts = []
    for gap in gaps:
        clock.now += gap
        asked = clock.now
        limit.acquire()
        assert clock.now >= asked
        starts.append(clock.now)
    assert windows_ok(starts, per, calls + (burst or 1) - 1)
    limit.close()


def test_no_wait_when_calls_come_slower_than_the_rate() -> None:
    limit, clock = fake_limit(10)
    for _ in range(20):
        clock.now += 0.1
        limit.acquire()
    assert clock.sleeps == []
    limit.close()


def test_deadline_raises_without_booking_a_start() -> None:
    limit, clock = fake_limit(1, per=10.0)
    limit.acquire()
    with pytest.raises(RateLimitTimeoutError, match="deadline"):
        limit.acquire(deadline=clock.now + 5)
    assert clock.sleeps == []
    limit.acquire(deadline=clock.now + 10)  # the failed call booked nothing: the next slot is free
    assert clock.sleeps == [pytest.approx(10.0)]
    limit.close()


# --- pauses -----------------------------------------------------------------------------


def test_pause_holds_every_start_until_it_ends() -> None:
    limit, clock = fake_limit(100)
    limit.pause(3.0)
    limit.acquire()
    assert clock.now == pytest.approx(1003.0)
    limit.pause_until(clock.now - 1)  # an earlier pause never shortens one in force
    limit.acquire()
    assert clock.now == pytest.approx(1003.01)
    limit.close()


def test_a_pause_that_begins_while_waiting_voids_the_booking() -> None:
    clock = FakeClock()
    paused = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if not paused:  # another worker saw a Retry-After while we slept
            paused.append(True)
            limit.pause_until(clock.now + 5.0)

    limit = RateLimit(1, per=1.0, clock=clock, sleep=sleep)
    limit.acquire()
    limit.acquire()
    assert clock.now >= 1006.0 - 1e-9
    limit.close()


# --- max_concurrent ---------------------------------------------------------------------


def test_max_concurrent_blocks_until_a_permit_is_released() -> None:
    limit = RateLimit(10_000, max_concurrent=2)
    first, second = limit.acquire(), limit.acquire()
    with pytest.raises(RateLimitTimeoutError, match="slot"):
        limit.acquire(deadline=time.monotonic() + 0.05)
    threading.Timer(0.1, first.release).start()
    third = limit.acquire(deadline=time.monotonic() + 5)
    for permit in (second, third, first):
        permit.release()
    limit.close()


def test_threads_of_one_process_share_the_slots() -> None:
    limit = RateLimit(10_000, max_concurrent=2)
    spans: list[tuple[float, float]] = []

    def work() -> None:
        with limit:
            start = time.monotonic()
            time.sleep(0.03)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert len(spans) == 6 and max(running) <= 2
    limit.close()


# --- the decorator, pickling ------------------------------------------------------------


def test_decorator_keeps_the_function_identity_and_paces_it() -> None:
    limit, clock = fake_limit(4)

    @limit
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    assert isinstance(double, Limited) and double.__name__ == "double" and double.__doc__ == "Twice x."
    assert [double(i) for i in range(3)] == [0, 2, 4]
    assert clock.now == pytest.approx(1000.5)
    limit.close()


def test_limiter_pickles_onto_the_same_state_with_its_clock() -> None:
    limit, _ = fake_limit(7, 2.0, burst=2, max_concurrent=3)
    copy = pickle.loads(pickle.dumps(limit))
    assert repr(copy) == repr(limit) == "RateLimit(calls=7, per=2.0, burst=2, max_concurrent=3)"
    assert copy.path == limit.path and isinstance(copy.clock, FakeClock)
    limit.acquire(), limit.acquire()
    copy.clock.now = limit.clock()  # same time, shared state: the burst is spent
    copy.acquire()
    assert copy.clock.now > limit.clock()
    limit.close()


def test_wrappers_pickle_by_value_and_module_level_ones_by_name() -> None:
    limit = RateLimit(1000)
    wrapped = limit(abs)
    copy = pickle.loads(pickle.dumps(wrapped))
    assert copy(-3) == 3 and copy.limit.path == limit.path and copy is not wrapped
    assert pickle.loads(pickle.dumps(limited_get)) is limited_get
    assert LIMIT.path  # the module-level limiter made its state in this (the creating) process
    limit.close()


def test_permit_release_is_idempotent() -> None:
    limit = RateLimit(1000, max_concurrent=1)
    permit = limit.acquire()
    assert isinstance(permit, Permit)
    permit.release()
    permit.release()
    with limit.acquire(deadline=time.monotonic() + 1):
        pass
    limit.close()


# --- files --------------------------------------------------------------------------------


def test_state_is_private_and_removed_by_its_creator() -> None:
    before = state_dirs()
    limit = RateLimit(5, max_concurrent=2)
    path = limit.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    for name in ("state", "slot-0", "slot-1"):
        assert stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode) == 0o600
    del limit
    gc.collect()
    assert not os.path.exists(path) and state_dirs() == before


def test_never_follows_a_symlink_in_place_of_the_state(tmp_path: Any) -> None:
    limit = RateLimit(5)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"\0" * 16)
    os.unlink(os.path.join(limit.path, "state"))
    os.symlink(target, os.path.join(limit.path, "state"))
    copy = pickle.loads(pickle.dumps(limit))
    with pytest.raises(OSError):
        copy.acquire()
    limit.close()
    assert target.exists() and target.read_bytes() == b"\0" * 16


def test_refuses_a_state_directory_others_can_read(tmp_path: Any) -> None:
    limit = RateLimit(5)
    os.chmod(limit.path, 0o755)
    copy = pickle.loads(pickle.dumps(limit))
    with pytest.raises(InvalidArgumentError, match="private"):
        copy.acquire()
    limit.close()


def test_stacked_decorators_keep_each_limit() -> None:
    inner, clock = fake_limit(1, per=10.0)
    outer = RateLimit(1000, clock=clock, sleep=clock.sleep)
    both = outer(inner(abs))
    assert both.limit is outer and both.__wrapped__.limit is inner
    assert both(-1) == 1 and both(-2) == 2
    assert clock.now == pytest.approx(1010.0)  # the inner limit paced the second call
    inner.close(), outer.close()
