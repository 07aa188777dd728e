"""CircuitBreaker tests that kill the survivors of a mutmut run over amorsize/breaker.py.

Exact validation messages, call() without a retry or a name to hide a bug, counts
cleared to zero on reset, and the open error's text and attributes.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from amorsize import CircuitBreaker, CircuitOpenError, CircuitState, InvalidArgumentError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold=0 is not valid; expected None or an int >= 1"),
        ({"half_open_max_calls": 0}, "half_open_max_calls=0 is not valid; expected an int >= 1"),
        ({"half_open_max_calls": None}, "half_open_max_calls=None is not valid; expected an int >= 1"),
        ({"failure_rate": "0.5", "window": 4},
         "failure_rate='0.5' is not valid; expected a number in (0, 1] or None"),
        ({"failure_rate": 0.5}, "window=None is not valid; expected an int >= 1 when failure_rate is set"),
        ({"window": 4}, "failure_rate=None is not valid; expected a number in (0, 1] when window is set"),
        ({"failure_threshold": None},
         "failure_threshold=None is not valid; expected an int >= 1 unless failure_rate is set"),
        ({"clock": 3}, "clock=3 is not valid; expected a callable returning seconds"),
        ({"on_state_change": 3}, "on_state_change=3 is not valid; expected None or a callable"),
        ({"name": 3}, "name=3 is not valid; expected None or a str"),
    ],
)
def test_each_invalid_argument_has_its_exact_message(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        CircuitBreaker(**kwargs)
    assert str(info.value) == message


def test_an_unclassifiable_report_is_named_exactly() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        CircuitBreaker().record_failure(42)  # type: ignore[arg-type]
    assert str(info.value) == (
        "error=42 is not valid; expected an exception, an exception class, a type name or None"
    )


def test_call_passes_keyword_arguments() -> None:
    assert CircuitBreaker().call(int, "ff", base=16) == 255


def test_call_reports_the_real_exception_so_ignored_types_do_not_count() -> None:
    breaker = CircuitBreaker(failure_threshold=1, ignores=KeyError)
    with pytest.raises(KeyError):
        breaker.call({}.__getitem__, "missing")
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats.failures == 0 and breaker.stats.successes == 1


def test_an_open_call_of_a_nameless_callable_without_qualname_is_refused_cleanly() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30, clock=clock)
    breaker.record_failure()
    target = functools.partial(int, base=2)  # no __qualname__
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(target, "101")
    assert str(info.value) == "circuit breaker is open; retry in 30s"
    assert info.value.breaker is None and info.value.retry_after == 30.0  # type: ignore[attr-defined]


def test_the_open_error_names_the_breaker_and_a_wait_under_one_second() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.5, clock=clock, name="db")
    breaker.record_failure()
    with pytest.raises(CircuitOpenError) as info, breaker:
        pass
    assert str(info.value) == "circuit breaker 'db' is open; retry in 0.5s"
    assert info.value.breaker == "db"  # type: ignore[attr-defined]


def test_a_nameless_breaker_used_as_a_context_manager_says_so_plainly() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=2, clock=clock)
    breaker.record_failure()
    with pytest.raises(CircuitOpenError) as info, breaker:
        pass
    assert str(info.value) == "circuit breaker is open; retry in 2s"


def test_reset_clears_the_rate_window_to_zero_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=None, failure_rate=0.5, window=4)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    breaker.reset()
    outcomes: Any = [True, False, False, False]  # 1 failure in 4: under the 50% rate
    for failed in outcomes:
        breaker.record_failure() if failed else breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()  # the window slides: F S S S -> S S S F, still 1 in 4
    assert breaker.state is CircuitState.CLOSED
