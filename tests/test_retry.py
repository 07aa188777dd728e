"""RetryPolicy: validation, which errors are retried, attempt counting, delays, pickling."""

from __future__ import annotations

import asyncio
import math
import pickle
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amorsize.errors import AmorsizeError, InvalidArgumentError
from amorsize.retry import (
    JITTER_HIGH,
    JITTER_LOW,
    RetryOutcome,
    RetryPolicy,
    call_with_retry,
    call_with_retry_async,
)
from tests._cycles import cyclic_garbage_of


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FixedRandom:
    """A random source that always returns the same number."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Flaky:
    """Raises ``errors`` one after the other, then returns ``value``."""

    def __init__(self, *errors: BaseException, value: Any = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.value = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def policy(**kwargs: Any) -> tuple[RetryPolicy, FakeClock]:
    clock = FakeClock()
    kwargs.setdefault("jitter", False)
    return RetryPolicy(sleep=clock.sleep, clock=clock, **kwargs), clock


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"max_retries": -1}, "max_retries", "-1"),
        ({"max_retries": True}, "max_retries", "True"),
        ({"max_retries": 2.0}, "max_retries", "2.0"),
        ({"initial_delay": -0.5}, "initial_delay", "-0.5"),
        ({"initial_delay": math.nan}, "initial_delay", "nan"),
        ({"max_delay": math.inf}, "max_delay", "inf"),
        ({"max_delay": "1"}, "max_delay", "'1'"),
        ({"initial_delay": 5.0, "max_delay": 1.0}, "initial_delay", "5.0"),
        ({"exponential_base": 0.5}, "exponential_base", "0.5"),
        ({"exponential_base": math.inf}, "exponential_base", "inf"),
        ({"jitter": 1}, "jitter", "1"),
        ({"retry_on": ValueError()}, "retry_on", "ValueError()"),
        ({"retry_on": (ValueError, int)}, "retry_on", "int"),
        ({"give_up_on": "KeyError"}, "give_up_on", "'KeyError'"),
        ({"max_elapsed": -1}, "max_elapsed", "-1"),
        ({"random": 0.5}, "random", "0.5"),
        ({"sleep": 3}, "sleep", "3"),
    ],
)
def test_invalid_arguments_name_field_value_and_expectation(
    kwargs: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        RetryPolicy(**kwargs)
    message = str(info.value)
    assert field in message
    assert shown in message
    assert "expected" in message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AmorsizeError)


def test_exception_specs_are_normalised_to_tuples() -> None:
    p = RetryPolicy(retry_on=OSError, give_up_on=[FileNotFoundError, PermissionError])
    assert p.retry_on == (OSError,)
    assert p.give_up_on == (FileNotFoundError, PermissionError)


def test_defaults_and_numbers_are_floats() -> None:
    p = RetryPolicy(initial_delay=1, max_delay=10, exponential_base=3)
    assert (p.max_retries, p.initial_delay, p.max_delay, p.exponential_base) == (3, 1.0, 10.0, 3.0)
    assert isinstance(p.initial_delay, float)


def test_policy_is_frozen() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.max_retries = 5  # type: ignore[misc]


# --- which errors are retried -------------------------------------------------


def test_give_up_on_wins_over_retry_on() -> None:
    p = RetryPolicy(retry_on=(OSError,), give_up_on=(FileNotFoundError,))
    assert p.should_retry(ConnectionError(), 1)
    assert not p.should_retry(FileNotFoundError(), 1)
    assert not p.should_retry(ValueError(), 1)


def test_should_retry_stops_after_max_retries() -> None:
    p = RetryPolicy(max_retries=2)
    assert [p.should_retry(ValueError(), n) for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert not RetryPolicy.none().should_retry(ValueError(), 1)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1), GeneratorExit()])
def test_base_exceptions_are_never_retried_by_default(exc: BaseException) -> None:
    assert not RetryPolicy().should_retry(exc, 1)
    assert not RetryPolicy(retry_on=BaseException).should_retry(exc, 1)


def test_base_exception_retried_when_named_explicitly() -> None:
    assert RetryPolicy(retry_on=(KeyboardInterrupt,)).should_retry(KeyboardInterrupt(), 1)


@pytest.mark.parametrize("runner", ["run", "call"])
def test_keyboard_interrupt_propagates_at_once(runner: str) -> None:
    p, clock = policy(max_retries=5)
    func = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        getattr(p, runner)(func, 1)
    assert func.calls == 1
    assert clock.sleeps == []


def test_keyboard_interrupt_on_a_later_attempt_propagates() -> None:
    p, clock = policy(max_retries=5)
    func = Flaky(ValueError(), KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        p.run(func, 1)
    assert func.calls == 2
    assert len(clock.sleeps) == 1


def test_explicitly_named_base_exception_is_retried_and_reported() -> None:
    p, _ = policy(max_retries=1, retry_on=(KeyboardInterrupt,))
    outcome = p.run(Flaky(KeyboardInterrupt(), KeyboardInterrupt()), 1)
    assert not outcome.ok
    assert isinstance(outcome.error, KeyboardInterrupt)
    assert outcome.attempts == 2


# --- running and counting attempts --------------------------------------------


def test_run_success_on_first_attempt() -> None:
    p, clock = policy()
    assert p.run(lambda x: x * 2, 21) == RetryOutcome(True, 42, None, 1)
    assert clock.sleeps == []


def test_run_counts_attempts_until_success() -> None:
    p, clock = policy(max_retries=3)
    func = Flaky(ValueError(), ValueError(), value="done")
    outcome = p.run(func, "item")
    assert outcome == RetryOutcome(True, "done", None, 3)
    assert func.calls == 3
    assert len(clock.sleeps) == 2


def test_run_reports_last_error_and_total_attempts() -> None:
    p, _ = policy(max_retries=3)
    errors = [ValueError(str(n)) for n in range(10)]
    outcome = p.run(Flaky(*errors), "item")
    assert not outcome.ok
    assert outcome.value is None
    assert outcome.error is errors[3]
    assert outcome.attempts == 4


def test_run_stops_at_once_on_give_up_error() -> None:
    p, clock = policy(max_retries=5, give_up_on=KeyError)
    func = Flaky(ValueError(), KeyError("k"), ValueError())
    outcome = p.run(func, 1)
    assert isinstance(outcome.error, KeyError)
    assert outcome.attempts == 2
    assert func.calls == 2
    assert len(clock.sleeps) == 1


def test_run_does_not_retry_errors_outside_retry_on() -> None:
    p, clock = policy(retry_on=OSError)
    outcome = p.run(Flaky(ValueError()), 1)
    assert (outcome.ok, outcome.attempts, clock.sleeps) == (False, 1, [])


def test_call_returns_value_and_passes_arguments() -> None:
    p, _ = policy()
    seen = []

    def func(a: int, *, b: int) -> int:
        seen.append((a, b))
        if len(seen) < 2:
            raise OSError("flaky")
        return a + b

    assert p.call(func, 1, b=2) == 3
    assert seen == [(1, 2), (1, 2)]


def test_call_raises_last_exception_unchanged() -> None:
    p, _ = policy(max_retries=2)
    errors = [ValueError("first"), ValueError("second"), ValueError("last")]
    with pytest.raises(ValueError) as info:
        p.call(Flaky(*errors))
    assert info.value is errors[2]


def test_none_policy_makes_one_attempt() -> None:
    p = RetryPolicy.none()
    assert p.max_retries == 0
    outcome = p.run(Flaky(ValueError()), 1)
    assert outcome.attempts == 1


def test_max_elapsed_stops_before_sleeping_past_the_budget() -> None:
    p, clock = policy(max_retries=10, initial_delay=1.0, max_elapsed=5.0)
    func = Flaky(*[OSError() for _ in range(20)])
    outcome = p.run(func, 1)
    # Waits 1, 2 (elapsed 3); waiting 4 more would pass the 5 s budget.
    assert clock.sleeps == [1.0, 2.0]
    assert outcome.attempts == 3
    assert func.calls == 3


# --- delays -------------------------------------------------------------------


def test_delays_without_jitter_grow_exponentially_and_cap() -> None:
    p, clock = policy(max_retries=6, initial_delay=0.5, max_delay=10.0, exponential_base=3.0)
    p.run(Flaky(*[OSError() for _ in range(10)]), 1)
    assert clock.sleeps == [0.5, 1.5, 4.5, 10.0, 10.0, 10.0]
    assert [p.compute_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]


def test_base_one_gives_constant_delay() -> None:
    p, _ = policy(initial_delay=2.0, exponential_base=1)
    assert {p.compute_delay(n) for n in (1, 2, 50, 10**18)} == {2.0}


@pytest.mark.parametrize("attempt", [10**3, 10**6, 10**18, 2**200])
@pytest.mark.parametrize("jitter", [False, True])
def test_huge_attempt_counts_do_not_overflow(attempt: int, jitter: bool) -> None:
    p = RetryPolicy(initial_delay=0.1, max_delay=60.0, exponential_base=10.0, jitter=jitter)
    delay = p.compute_delay(attempt)
    assert 0.5 * 60.0 <= delay <= 60.0
    if not jitter:
        assert delay == 60.0


@pytest.mark.parametrize("attempt", [0, -1, True, 1.0])
def test_compute_delay_rejects_bad_attempt(attempt: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="attempt"):
        RetryPolicy().compute_delay(attempt)


def test_jitter_spans_half_to_one_and_a_half_times_the_base_delay() -> None:
    low = RetryPolicy(initial_delay=2.0, random=FixedRandom(0.0))
    high = RetryPolicy(initial_delay=2.0, random=FixedRandom(0.999999))
    assert low.compute_delay(1) == JITTER_LOW * 2.0
    assert high.compute_delay(1) == pytest.approx(JITTER_HIGH * 2.0, rel=1e-5)


def test_jitter_is_capped_after_it_is_applied() -> None:
    p = RetryPolicy(initial_delay=8.0, max_delay=10.0, random=FixedRandom(0.99))
    assert p.compute_delay(1) == 10.0  # 8 * 1.49 would be 11.92
    at_cap = RetryPolicy(initial_delay=1.0, max_delay=10.0, random=FixedRandom(0.0))
    assert at_cap.compute_delay(50) == 5.0  # delays at the cap still spread out


def test_seeded_random_makes_delays_reproducible() -> None:
    a = RetryPolicy(random=random.Random(7))
    b = RetryPolicy(random=random.Random(7))
    assert [a.compute_delay(n) for n in range(1, 8)] == [b.compute_delay(n) for n in range(1, 8)]


def test_jittered_delays_reach_the_injected_sleep() -> None:
    p, clock = policy(max_retries=3, jitter=True, random=FixedRandom(0.25))
    p.run(Flaky(OSError(), OSError(), OSError()), 1)
    assert clock.sleeps == pytest.approx([0.075, 0.15, 0.3])


seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(
    initial=seconds,
    extra=seconds,
    base=st.floats(min_value=1.0, max_value=1e3),
    attempt=st.integers(min_value=1, max_value=10**20),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    jitter=st.booleans(),
)
def test_delay_is_always_between_zero_and_max_delay(
    initial: float, extra: float, base: float, attempt: int, draw: float, jitter: bool
) -> None:
    p = RetryPolicy(
        initial_delay=initial,
        max_delay=initial + extra,
        exponential_base=base,
        jitter=jitter,
        random=FixedRandom(draw),
    )
    delay = p.compute_delay(attempt)
    assert 0.0 <= delay <= p.max_delay
    if jitter:
        assert delay >= JITTER_LOW * min(initial, p.max_delay) - 1e-9


@given(attempt=st.integers(min_value=1, max_value=10**6))
def test_delays_never_shrink_without_jitter(attempt: int) -> None:
    p = RetryPolicy(initial_delay=0.01, max_delay=30.0, exponential_base=1.7, jitter=False)
    assert p.compute_delay(attempt) <= p.compute_delay(attempt + 1)


# --- value semantics and pickling ---------------------------------------------


@pytest.mark.parametrize(
    "p",
    [
        RetryPolicy(),
        RetryPolicy.none(),
        RetryPolicy(
            max_retries=7,
            initial_delay=0.0,
            max_delay=2.5,
            exponential_base=1.5,
            jitter=False,
            retry_on=(OSError, TimeoutError),
            give_up_on=(FileNotFoundError, PermissionError),
            max_elapsed=30.0,
        ),
        RetryPolicy(retry_on=ConnectionError, random=random.Random(3)),
    ],
    ids=["defaults", "none", "custom", "seeded-random"],
)
def test_policy_pickles_and_round_trips_equal(p: RetryPolicy) -> None:
    # From protocol 3 up. Protocol 2 (with the default fix_imports=True) writes builtin
    # OSError subclasses such as TimeoutError as Python 2's OSError, which would widen
    # retry_on/give_up_on; multiprocessing and cloudpickle use protocol 4 or later.
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(p, protocol=protocol))
        assert clone == p
        assert hash(clone) == hash(p)
        assert clone.retry_on == p.retry_on
        assert clone.give_up_on == p.give_up_on
        assert clone.should_retry(OSError(), 1) == p.should_retry(OSError(), 1)


def test_equality_is_by_value_and_ignores_injected_collaborators() -> None:
    clock = FakeClock()
    assert RetryPolicy(max_retries=2) == RetryPolicy(max_retries=2, sleep=clock.sleep)
    assert RetryPolicy(max_retries=2) != RetryPolicy(max_retries=3)
    assert RetryPolicy(retry_on=OSError) == RetryPolicy(retry_on=(OSError,))
    assert len({RetryPolicy(), RetryPolicy()}) == 1


def test_outcome_pickles() -> None:
    outcome = RetryOutcome(False, None, ValueError("boom"), 3)
    clone = pickle.loads(pickle.dumps(outcome))
    assert (clone.ok, clone.value, clone.attempts) == (False, None, 3)
    assert isinstance(clone.error, ValueError)
    assert str(clone.error) == "boom"


def test_repr_is_short_and_readable() -> None:
    text = repr(RetryPolicy(retry_on=(OSError, TimeoutError)))
    assert text == (
        "RetryPolicy(max_retries=3, initial_delay=0.1, max_delay=60.0, exponential_base=2.0, "
        "jitter=True, retry_on=(OSError, TimeoutError), give_up_on=())"
    )
    assert "sleep=" in repr(policy()[0])


async def _fails_async(x: int) -> int:
    raise ValueError(f"item {x} fails")


def _fails(x: int) -> int:
    raise ValueError(f"item {x} fails")


@pytest.mark.parametrize("retry", [None, RetryPolicy(max_retries=2, initial_delay=0.0, jitter=False)],
                         ids=["once", "retried"])
def test_a_final_failure_leaves_no_reference_cycle(retry: Any) -> None:
    # The runner returns the error; the frame that caught it (in its traceback) must not
    # keep it in a local, or each failure waits for the cyclic collector.
    async def many() -> None:
        for i in range(10):
            assert not (await call_with_retry_async(_fails_async, i, retry)).ok

    def sync() -> None:
        for i in range(10):
            assert not call_with_retry(_fails, i, retry).ok

    assert not cyclic_garbage_of(ValueError, sync)
    assert not cyclic_garbage_of(ValueError, lambda: asyncio.run(many()))
