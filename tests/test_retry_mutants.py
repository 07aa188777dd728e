"""RetryPolicy tests that kill the survivors of a mutmut run over amorsize/retry.py.

Exact messages (a mutated name or expectation text must fail), a clock that does
not start at zero (``clock() - start`` against ``clock()``), ``call()`` without a
retry to hide a broken call, and the delay arithmetic at its edges.
"""

from __future__ import annotations

from typing import Any, List

import pytest

from amorsize import InvalidArgumentError, RetryPolicy

SECONDS = "a non-negative finite number of seconds"


class Clock:
    """Starts at ``now`` (not 0) and moves only when slept on."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def never_called() -> float:
    raise AssertionError("the clock is only read when max_elapsed is set")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries=-1 is not valid; expected a non-negative int"),
        ({"initial_delay": -1}, f"initial_delay=-1 is not valid; expected {SECONDS}"),
        ({"max_delay": -2}, f"max_delay=-2 is not valid; expected {SECONDS}"),
        ({"initial_delay": 5, "max_delay": 1},
         "initial_delay=5 is not valid; expected a value no greater than max_delay=1"),
        ({"exponential_base": 0.5}, "exponential_base=0.5 is not valid; expected a finite number >= 1"),
        ({"exponential_base": "2"}, "exponential_base='2' is not valid; expected a finite number >= 1"),
        ({"exponential_base": True}, "exponential_base=True is not valid; expected a finite number >= 1"),
        ({"jitter": "yes"}, "jitter='yes' is not valid; expected True or False"),
        ({"max_elapsed": -1}, f"max_elapsed=-1 is not valid; expected {SECONDS}"),
        ({"sleep": 3}, "sleep=3 is not valid; expected a callable taking seconds"),
        ({"clock": 3}, "clock=3 is not valid; expected a callable returning seconds"),
        ({"random": 0.5}, "random=0.5 is not valid; expected None or an object with a random() method"),
        ({"retry_on": "x"},
         "retry_on='x' is not valid; expected an exception class or a tuple of exception classes"),
        ({"give_up_on": 1},
         "give_up_on=1 is not valid; expected an exception class or a tuple of exception classes"),
    ],
)
def test_each_invalid_argument_has_its_exact_message(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        RetryPolicy(**kwargs)
    assert str(info.value) == message


def test_compute_delay_names_a_bad_attempt_exactly() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        RetryPolicy().compute_delay(0)
    assert str(info.value) == "attempt=0 is not valid; expected an int >= 1"


def test_repr_writes_one_class_as_a_one_tuple_and_shows_max_elapsed() -> None:
    text = repr(RetryPolicy(retry_on=ValueError, give_up_on=(KeyError, OSError), max_elapsed=5))
    assert "retry_on=(ValueError,)" in text and "give_up_on=(KeyError, OSError)" in text
    assert text.endswith(", max_elapsed=5.0)")


@pytest.mark.parametrize("runner", ["run", "call"])
def test_max_elapsed_counts_from_the_first_attempt_not_from_zero(runner: str) -> None:
    clock = Clock(1000.0)
    p = RetryPolicy(max_retries=10, initial_delay=1, jitter=False, max_elapsed=3,
                    sleep=clock.sleep, clock=clock)
    failing = _always(OSError("down"))
    if runner == "run":
        outcome = p.run(failing, 1)
        assert outcome.ok is False and isinstance(outcome.error, OSError)
        assert outcome.attempts == 3
    else:
        with pytest.raises(OSError):
            p.call(failing)
    # Waits 1, then 2 more lands exactly on the 3 s budget (allowed); 4 more would pass it.
    assert clock.sleeps == [1.0, 2.0]


def test_a_wait_that_lands_exactly_on_max_elapsed_is_allowed() -> None:
    clock = Clock(500.0)
    p = RetryPolicy(max_retries=5, initial_delay=1, jitter=False, max_elapsed=3,
                    sleep=clock.sleep, clock=clock)
    outcome = p.run(_fails_times(2), 1)
    assert outcome.ok is True and outcome.attempts == 3 and clock.sleeps == [1.0, 2.0]


def test_out_of_budget_outcome_is_a_real_failure() -> None:
    clock = Clock(10.0)
    p = RetryPolicy(max_retries=5, initial_delay=5, jitter=False, max_elapsed=1,
                    sleep=clock.sleep, clock=clock)
    error = ValueError("no")

    def failing(_x: Any) -> None:
        raise error

    outcome = p.run(failing, 1)
    assert outcome.ok is False and outcome.error is error and outcome.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("runner", ["run", "call"])
def test_the_clock_is_not_read_without_max_elapsed(runner: str) -> None:
    slept: List[float] = []
    p = RetryPolicy(max_retries=2, initial_delay=0.5, jitter=False, sleep=slept.append,
                    clock=never_called)
    func = _fails_times(1)
    result = p.run(func, 1).value if runner == "run" else p.call(func, 1)
    assert result == "ok" and slept == [0.5]


def test_call_passes_positional_and_keyword_arguments_without_a_retry_to_hide_a_bug() -> None:
    once = RetryPolicy.none()
    assert once.call(divmod, 7, 2) == (3, 1)
    assert once.call(int, "ff", base=16) == 255
    assert once.call(lambda a, *, b: a - b, 5, b=2) == 3


def test_call_retries_with_the_same_arguments_and_returns_the_value() -> None:
    seen: List[Any] = []

    def flaky(a: int, *, b: int) -> int:
        seen.append((a, b))
        if len(seen) < 3:
            raise ConnectionError("again")
        return a * b

    p = RetryPolicy(max_retries=3, initial_delay=0, jitter=False, sleep=lambda s: None)
    assert p.call(flaky, 6, b=7) == 42 and seen == [(6, 7)] * 3


def test_call_raises_the_real_error_after_the_last_retry() -> None:
    p = RetryPolicy(max_retries=1, initial_delay=0, jitter=False, sleep=lambda s: None)
    with pytest.raises(LookupError, match="still missing"):
        p.call(_always(LookupError("still missing")))


def test_call_retries_a_base_exception_named_explicitly() -> None:
    p = RetryPolicy(max_retries=2, initial_delay=0, jitter=False, retry_on=KeyboardInterrupt,
                    sleep=lambda s: None)
    func = _fails_times(1, KeyboardInterrupt)
    assert p.call(func) == "ok" and func.calls == 2  # type: ignore[attr-defined]


def test_zero_initial_delay_stays_zero_for_every_attempt() -> None:
    p = RetryPolicy(initial_delay=0, max_delay=10, jitter=False)
    assert [p.compute_delay(n) for n in (1, 2, 3, 50)] == [0.0, 0.0, 0.0, 0.0]


def test_a_one_second_cap_is_not_special() -> None:
    p = RetryPolicy(initial_delay=0.25, max_delay=1, exponential_base=2, jitter=False)
    assert [p.compute_delay(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]


def test_a_huge_base_reaches_the_cap_without_overflowing() -> None:
    p = RetryPolicy(initial_delay=0.1, max_delay=60, exponential_base=1e300, jitter=False)
    assert [p.compute_delay(n) for n in (1, 2, 3, 4)] == [0.1, 60.0, 60.0, 60.0]


def _fails_times(n: int, kind: type = OSError) -> Any:
    class Func:
        calls = 0

        def __call__(self, *_args: Any) -> str:
            self.calls += 1
            if self.calls <= n:
                raise kind("not yet")
            return "ok"

    return Func()


def _always(error: BaseException) -> Any:
    def func(*_args: Any) -> None:
        raise error

    return func


@pytest.mark.parametrize("runner", ["run", "call"])
def test_a_named_base_exception_is_retried_within_max_elapsed(runner: str) -> None:
    clock = Clock(50.0)
    p = RetryPolicy(max_retries=3, initial_delay=1, jitter=False, retry_on=KeyboardInterrupt,
                    max_elapsed=10, sleep=clock.sleep, clock=clock)
    func = _fails_times(2, KeyboardInterrupt)
    result = p.run(func, 1).value if runner == "run" else p.call(func, 1)
    assert result == "ok" and func.calls == 3 and clock.sleeps == [1.0, 2.0]
