"""CircuitBreaker: a model-checked state machine, then the behaviours one at a time."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from amorsize._breaker_window import ClosedWindow
from amorsize.breaker import BreakerStats, CircuitBreaker, CircuitState
from amorsize.errors import AmorsizeError, CircuitOpenError, InvalidArgumentError

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Transitions:
    """An ``on_state_change`` callback that remembers what it saw (and pickles)."""

    def __init__(self) -> None:
        self.seen: list[tuple[CircuitState, CircuitState]] = []

    def __call__(self, old: CircuitState, new: CircuitState) -> None:
        self.seen.append((old, new))


def make(**kwargs: Any) -> tuple[CircuitBreaker, Clock, Transitions]:
    clock, transitions = Clock(), Transitions()
    breaker = CircuitBreaker(clock=clock, on_state_change=transitions, **kwargs)
    return breaker, clock, transitions


def trip(breaker: CircuitBreaker) -> None:
    while breaker.state is not OPEN:
        breaker.record_failure()


# --- the model ----------------------------------------------------------------


class Model:
    """The breaker's rules written out plainly, over the full list of outcomes."""

    def __init__(self, threshold: Any, rate: Any, window: Any, timeout: float, trials: int):
        self.threshold, self.rate, self.window = threshold, rate, window
        self.timeout, self.max_trials = timeout, trials
        self.state = CLOSED
        self.outcomes: list[bool] = []  # True = failure, since the circuit last closed
        self.opened_at = 0.0
        self.admitted = self.trial_ok = 0
        self.stats = {"calls": 0, "successes": 0, "failures": 0, "rejections": 0, "opens": 0}
        self.transitions: list[tuple[CircuitState, CircuitState]] = []

    def move(self, new: CircuitState, now: float) -> None:
        if new is self.state:
            return
        self.transitions.append((self.state, new))
        self.state, self.outcomes, self.admitted, self.trial_ok = new, [], 0, 0
        if new is OPEN:
            self.opened_at = now
            self.stats["opens"] += 1

    def look(self, now: float) -> None:
        if self.state is OPEN and now - self.opened_at >= self.timeout:
            self.move(HALF_OPEN, now)

    def allow(self, now: float) -> bool:
        self.look(now)
        if self.state is CLOSED or (self.state is HALF_OPEN and self.admitted < self.max_trials):
            self.admitted += self.state is HALF_OPEN
            return True
        self.stats["rejections"] += 1
        return False

    def success(self, now: float) -> None:
        self.look(now)
        self.stats["calls"] += 1
        self.stats["successes"] += 1
        if self.state is CLOSED:
            self.outcomes.append(False)
        elif self.state is HALF_OPEN and self.trial_ok < self.admitted:
            self.trial_ok += 1
            if self.trial_ok == self.max_trials:
                self.move(CLOSED, now)

    def failure(self, now: float) -> None:
        self.look(now)
        self.stats["calls"] += 1
        self.stats["failures"] += 1
        if self.state is HALF_OPEN:
            self.move(OPEN, now)
        elif self.state is CLOSED:
            self.outcomes.append(True)
            in_a_row = 0
            for failed in reversed(self.outcomes):
                if not failed:
                    break
                in_a_row += 1
            recent = self.outcomes[-self.window :] if self.window else []
            by_count = self.threshold is not None and in_a_row >= self.threshold
            by_rate = (
                self.rate is not None
                and len(self.outcomes) >= self.window
                and sum(recent) >= self.rate * self.window
            )
            if by_count or by_rate:
                self.move(OPEN, now)

    def interrupted(self, now: float) -> None:
        self.look(now)
        if self.state is HALF_OPEN and self.admitted > self.trial_ok:
            self.admitted -= 1

    def time_until_retry(self, now: float) -> float:
        self.look(now)
        return max(0.0, self.opened_at + self.timeout - now) if self.state is OPEN else 0.0


COUNTED = [OSError("down"), ConnectionError, "TimeoutError", "builtins.OSError", None]
AS_SUCCESS = [
    FileNotFoundError(),
    FileNotFoundError,
    "FileNotFoundError",
    ValueError("bad"),
    KeyError,
]
NEUTRAL = [KeyboardInterrupt(), SystemExit]


class BreakerMachine(RuleBasedStateMachine):
    """Drive a breaker and the model with the same steps; they must always agree."""

    @initialize(
        threshold=st.one_of(st.none(), st.integers(1, 4)),
        rate_window=st.one_of(
            st.none(), st.tuples(st.sampled_from([0.25, 0.5, 0.6, 1.0]), st.integers(1, 5))
        ),
        timeout=st.sampled_from([0.0, 1.0, 2.5, 5.0]),
        trials=st.integers(1, 3),
    )
    def setup(self, threshold: Any, rate_window: Any, timeout: float, trials: int) -> None:
        if threshold is None and rate_window is None:
            threshold = 3
        rate, window = rate_window or (None, None)
        self.clock = Clock()
        self.seen = Transitions()
        self.breaker = CircuitBreaker(
            threshold,
            rate,
            window,
            timeout,
            trials,
            counts=OSError,
            ignores=FileNotFoundError,
            clock=self.clock,
            on_state_change=self.seen,
        )
        self.model = Model(threshold, rate, window, timeout, trials)

    @rule()
    def allow(self) -> None:
        assert self.breaker.allow() == self.model.allow(self.clock.now)

    @rule()
    def success(self) -> None:
        self.breaker.record_success()
        self.model.success(self.clock.now)

    @rule(report=st.sampled_from(COUNTED))
    def counted_failure(self, report: Any) -> None:
        assert self.breaker.record_failure(report) is True
        self.model.failure(self.clock.now)

    @rule(report=st.sampled_from(AS_SUCCESS))
    def ignored_failure(self, report: Any) -> None:
        assert self.breaker.record_failure(report) is False
        self.model.success(self.clock.now)

    @rule(report=st.sampled_from(NEUTRAL))
    def interrupted(self, report: Any) -> None:
        assert self.breaker.record_failure(report) is False
        self.model.interrupted(self.clock.now)

    @rule()
    def release(self) -> None:
        self.breaker.release()
        self.model.interrupted(self.clock.now)

    @rule(fails=st.booleans())
    def guarded_call(self, fails: bool) -> None:
        allowed = self.model.allow(self.clock.now)
        try:
            with self.breaker:
                assert allowed
                if fails:
                    raise OSError("down")
        except CircuitOpenError:
            assert not allowed
            return
        except OSError:
            self.model.failure(self.clock.now)
            return
        self.model.success(self.clock.now)

    @rule(halves=st.integers(0, 12))
    def advance_clock(self, halves: int) -> None:
        self.clock.advance(halves * 0.5)

    @rule()
    def look(self) -> None:
        self.model.look(self.clock.now)
        assert self.breaker.state is self.model.state

    @invariant()
    def agrees_with_model(self) -> None:
        now = self.clock.now
        assert self.breaker.time_until_retry() == self.model.time_until_retry(now)
        assert self.breaker.state is self.model.state
        assert self.breaker.stats == BreakerStats(**self.model.stats)
        assert self.seen.seen == self.model.transitions

    @invariant()
    def half_open_admits_at_most_max_trials(self) -> None:
        assert self.model.admitted <= self.breaker.half_open_max_calls
        assert self.breaker._trials == self.model.admitted <= self.breaker.half_open_max_calls


TestBreakerMachine = BreakerMachine.TestCase


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"failure_threshold": None}, "failure_threshold"),
        ({"failure_rate": 0.5}, "window"),
        ({"window": 10}, "failure_rate"),
        ({"failure_rate": 0.0, "window": 10}, "failure_rate"),
        ({"failure_rate": 1.5, "window": 10}, "failure_rate"),
        ({"failure_rate": 0.5, "window": 0}, "window"),
        ({"reset_timeout": -1.0}, "reset_timeout"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"counts": "OSError"}, "counts"),
        ({"ignores": (KeyError, 3)}, "ignores"),
        ({"on_state_change": 1}, "on_state_change"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        CircuitBreaker(**kwargs)
    assert f"{field}=" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AmorsizeError)


def test_rate_without_threshold_is_valid() -> None:
    breaker = CircuitBreaker(failure_threshold=None, failure_rate=0.5, window=4)
    assert breaker.state is CLOSED


def test_state_values() -> None:
    assert [s.value for s in CircuitState] == ["closed", "open", "half_open"]


# --- closed -------------------------------------------------------------------


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _, seen = make(failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # breaks the run
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CLOSED
    breaker.record_failure()
    assert breaker.state is OPEN
    assert seen.seen == [(CLOSED, OPEN)]
    assert not breaker.allow()


def test_rate_window_opens_only_when_window_is_full() -> None:
    breaker, _, _ = make(failure_threshold=None, failure_rate=0.5, window=4)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is CLOSED  # 3 of 3 failed, but the window holds 4
    breaker.record_success()
    assert breaker.state is CLOSED  # successes never open it
    breaker.record_failure()  # the window is now F F S F: 3 of 4 failed
    assert breaker.state is OPEN


def test_rate_window_slides() -> None:
    breaker, _, _ = make(failure_threshold=None, failure_rate=0.5, window=4)
    for outcome in "FSSSSSF":  # the early failure slides out of the window
        breaker.record_failure() if outcome == "F" else breaker.record_success()
    assert breaker.state is CLOSED
    breaker.record_failure()  # S S F F -> 2/4
    assert breaker.state is OPEN


def test_threshold_and_rate_both_apply() -> None:
    breaker, _, _ = make(failure_threshold=3, failure_rate=0.75, window=8)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is OPEN


# --- open and half-open -------------------------------------------------------


def test_reset_timeout_moves_to_half_open_lazily() -> None:
    breaker, clock, seen = make(failure_threshold=1, reset_timeout=30.0)
    breaker.record_failure()
    clock.advance(29.5)
    assert breaker.state is OPEN
    assert breaker.time_until_retry() == pytest.approx(0.5)
    clock.advance(0.5)
    assert seen.seen == [(CLOSED, OPEN)]  # nobody looked yet
    assert breaker.time_until_retry() == 0.0
    assert breaker.state is HALF_OPEN
    assert seen.seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_admits_limited_trials_and_closes_after_all_succeed() -> None:
    breaker, clock, seen = make(failure_threshold=1, reset_timeout=10.0, half_open_max_calls=2)
    trip(breaker)
    clock.advance(10.0)
    assert [breaker.allow() for _ in range(3)] == [True, True, False]
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert seen.seen[-1] == (HALF_OPEN, CLOSED)
    assert breaker.stats.rejections == 2


def test_half_open_failure_reopens_and_restarts_the_timer() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=10.0, half_open_max_calls=2)
    trip(breaker)
    clock.advance(15.0)
    assert breaker.allow()
    breaker.record_failure(OSError("still down"))
    assert breaker.state is OPEN
    assert breaker.time_until_retry() == pytest.approx(10.0)
    assert breaker.stats.opens == 2


def test_success_without_a_trial_slot_does_not_close() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=1.0)
    trip(breaker)
    clock.advance(1.0)
    breaker.record_success()  # a call that started before the circuit opened
    assert breaker.state is HALF_OPEN


def test_late_reports_while_open_change_nothing() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=10.0)
    trip(breaker)
    clock.advance(4.0)
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is OPEN
    assert breaker.time_until_retry() == pytest.approx(6.0)


def test_release_gives_back_a_trial_slot() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=1.0)
    trip(breaker)
    clock.advance(1.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_keyboard_interrupt_in_a_trial_releases_the_slot_and_propagates() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=1.0)
    trip(breaker)
    clock.advance(1.0)
    with pytest.raises(KeyboardInterrupt), breaker:
        raise KeyboardInterrupt
    assert breaker.state is HALF_OPEN
    assert breaker.allow()


def test_reset_closes_and_keeps_stats() -> None:
    breaker, _, seen = make(failure_threshold=2)
    trip(breaker)
    breaker.reset()
    assert breaker.state is CLOSED
    assert seen.seen == [(CLOSED, OPEN), (OPEN, CLOSED)]
    assert breaker.stats.failures == 2
    breaker.record_failure()
    assert breaker.state is CLOSED  # the run of failures was forgotten


# --- what counts --------------------------------------------------------------


def test_classification_of_reports() -> None:
    breaker = CircuitBreaker(counts=(OSError,), ignores=(FileNotFoundError,))
    assert breaker.is_failure(None) is True
    assert breaker.is_failure(ConnectionError()) is True
    assert breaker.is_failure(TimeoutError) is True
    assert breaker.is_failure(FileNotFoundError()) is False  # ignores wins over counts
    assert breaker.is_failure(ValueError()) is False  # not counted: a success
    assert breaker.is_failure("FileNotFoundError") is False
    assert breaker.is_failure("builtins.FileNotFoundError") is False
    assert breaker.is_failure("ValueError") is True  # a name cannot be checked against counts
    assert breaker.is_failure(KeyboardInterrupt()) is None
    assert CircuitBreaker(counts=BaseException).is_failure(KeyboardInterrupt) is True


def test_ignored_errors_count_as_success() -> None:
    breaker, _, _ = make(failure_threshold=2, ignores=(KeyError,))
    breaker.record_failure()
    assert breaker.record_failure(KeyError("k")) is False
    breaker.record_failure()
    assert breaker.state is CLOSED
    assert breaker.stats == BreakerStats(calls=3, successes=1, failures=2, rejections=0, opens=0)


def test_bad_report_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="error=42"):
        CircuitBreaker().record_failure(42)  # type: ignore[arg-type]


# --- callbacks and threads ----------------------------------------------------


@pytest.mark.timeout(10)
def test_callbacks_run_outside_the_lock() -> None:
    breaker: CircuitBreaker
    observed = []

    def on_change(old: CircuitState, new: CircuitState) -> None:
        assert not breaker._lock.locked()
        observed.append((old, new, breaker.state, breaker.time_until_retry() >= 0))

    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=1, reset_timeout=5.0, clock=clock, on_state_change=on_change
    )
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert observed == [
        (CLOSED, OPEN, OPEN, True),
        (OPEN, HALF_OPEN, HALF_OPEN, True),
        (HALF_OPEN, CLOSED, CLOSED, True),
    ]


@pytest.mark.timeout(30)
def test_concurrent_reports_are_all_counted() -> None:
    breaker = CircuitBreaker(failure_threshold=10**9)

    def hammer() -> None:
        for n in range(2000):
            if breaker.allow():
                breaker.record_failure() if n % 3 else breaker.record_success()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = breaker.stats
    assert stats.calls == 16000
    assert stats.successes + stats.failures == 16000
    assert stats.successes == 8 * len(range(0, 2000, 3))


# --- decorator, context manager, call -----------------------------------------


def test_service_that_is_down() -> None:
    breaker, clock, _ = make(failure_threshold=5, reset_timeout=30.0, half_open_max_calls=1)
    calls = 0

    @breaker
    def fetch(item: int) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("service down")

    def hammer() -> tuple[int, int]:
        down = refused = 0
        for item in range(100):
            try:
                fetch(item)
            except ConnectionError:
                down += 1
            except CircuitOpenError:
                refused += 1
        return down, refused

    assert hammer() == (5, 95)
    assert calls == breaker.failure_threshold
    clock.advance(31.0)
    hammer()
    assert calls <= breaker.failure_threshold + breaker.half_open_max_calls
    assert calls == 6
    assert breaker.state is OPEN


def test_decorator_keeps_metadata_and_names_the_function_when_open() -> None:
    breaker, _, _ = make(failure_threshold=1, reset_timeout=12.0)

    @breaker
    def lookup(key: str) -> str:
        """Look a key up."""
        if key == "bad":
            raise OSError("no")
        return key.upper()

    assert lookup.__name__ == "lookup"
    assert lookup.__doc__ == "Look a key up."
    assert lookup("a") == "A"
    with pytest.raises(OSError):
        lookup("bad")
    with pytest.raises(CircuitOpenError) as info:
        lookup("a")
    assert "lookup" in str(info.value)
    assert "12s" in str(info.value)
    assert info.value.retry_after == pytest.approx(12.0)  # type: ignore[attr-defined]


def test_context_manager_records_outcomes_and_does_not_swallow() -> None:
    breaker, _, _ = make(failure_threshold=2, name="payments")
    with breaker:
        pass
    for _ in range(2):
        with pytest.raises(OSError), breaker:
            raise OSError("down")
    with pytest.raises(CircuitOpenError, match="'payments' is open; retry in 30s"), breaker:
        pytest.fail("the body must not run")
    assert breaker.stats == BreakerStats(calls=3, successes=1, failures=2, rejections=1, opens=1)


def test_call_passes_arguments_and_returns() -> None:
    breaker, _, _ = make()
    assert breaker.call(divmod, 7, 2) == (3, 1)
    assert breaker.stats.successes == 1


def test_half_open_refusal_message() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=1.0, name="db")
    trip(breaker)
    clock.advance(1.0)
    assert breaker.allow()
    with pytest.raises(CircuitOpenError, match="half-open"):
        breaker.call(print)


# --- pickling -----------------------------------------------------------------


def test_pickles_with_defaults() -> None:
    clone = pickle.loads(pickle.dumps(CircuitBreaker()))
    assert clone.state is CLOSED
    assert clone.failure_threshold == 5
    assert clone.allow()


def test_pickles_with_state_and_a_fresh_lock() -> None:
    breaker, clock, _ = make(
        failure_threshold=3,
        failure_rate=0.5,
        window=4,
        reset_timeout=20.0,
        counts=(OSError, TimeoutError),
        ignores=FileNotFoundError,
        name="api",
    )
    trip(breaker)
    clock.advance(5.0)
    assert not breaker.allow()
    clone = pickle.loads(pickle.dumps(breaker))
    assert clone._lock is not breaker._lock
    assert clone.state is OPEN
    assert clone.stats == breaker.stats
    assert clone.time_until_retry() == pytest.approx(15.0)
    assert (clone.counts, clone.ignores, clone.name) == (
        (OSError, TimeoutError),
        (FileNotFoundError,),
        "api",
    )
    clone.clock.advance(15.0)  # type: ignore[attr-defined]
    assert clone.allow()
    clone.record_success()
    assert clone.state is CLOSED
    assert breaker.state is OPEN  # the original is independent
    assert clone.on_state_change.seen[-2:] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]  # type: ignore[union-attr]


def test_half_open_breaker_pickles_its_trial_slots() -> None:
    breaker, clock, _ = make(failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2)
    trip(breaker)
    clock.advance(1.0)
    assert breaker.allow()
    clone = pickle.loads(pickle.dumps(breaker))
    assert clone.allow()
    assert not clone.allow()


# --- the closed window --------------------------------------------------------


@given(st.integers(1, 8), st.lists(st.booleans(), max_size=40))
def test_closed_window_agrees_with_a_recount(size: int, outcomes: list[bool]) -> None:
    window = ClosedWindow(size)
    for failed in outcomes:
        window.add(failed)
    recent = outcomes[-size:]
    trailing = len(outcomes) - max((i + 1 for i, failed in enumerate(outcomes) if not failed),
                                   default=0)
    assert len(window) == len(recent)
    assert window.failures == sum(recent)
    assert window.consecutive == trailing
    assert window.tripped(None, 0.5) == (len(recent) == size and sum(recent) >= 0.5 * size)
    assert window.tripped(3, None) == (trailing >= 3)
    restored = pickle.loads(pickle.dumps(window))
    assert (restored.failures, restored.consecutive, len(restored)) == (
        window.failures, window.consecutive, len(window))
    window.clear()
    assert (window.failures, window.consecutive, len(window)) == (0, 0, 0)


def test_closed_window_without_a_size_counts_only_the_streak() -> None:
    window = ClosedWindow(None)
    for failed in (True, True, False, True):
        window.add(failed)
    assert (window.consecutive, window.failures, len(window)) == (1, 0, 0)
    assert not window.tripped(None, 0.1)

