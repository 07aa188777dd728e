"""Retry-After: parsing every shape errors carry it in; RetryPolicy honouring it and pausing a limiter."""

from __future__ import annotations

import pickle
import urllib.error
from email.utils import formatdate
from typing import Any, Callable

import pytest
from _http_service import HTTPService, fetch
from hypothesis import given
from hypothesis import strategies as st

from amorsize.retry import RetryPolicy, call_with_retry
from amorsize.retry_after import parse_retry_after, retry_after_seconds

NOW = 1_700_000_000.0


def now() -> float:
    return NOW


class Headers:
    """A case-insensitive header mapping, like requests' and httpx's."""

    def __init__(self, **items: str) -> None:
        self._items = {k.lower().replace("_", "-"): v for k, v in items.items()}

    def get(self, name: str, default: Any = None) -> Any:
        return self._items.get(name.lower(), default)


class Response:
    def __init__(self, headers: Any) -> None:
        self.headers = headers
        self.status_code = 429


class HTTPStatusError(Exception):
    """Shaped like ``requests.HTTPError`` / ``httpx.HTTPStatusError``: the response rides along."""

    def __init__(self, headers: Any) -> None:
        super().__init__("429 Too Many Requests")
        self.response = Response(headers)


class Throttled(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        (b"7", 7.0),
        (0, 0.0),
        (2.5, 2.5),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),  # a date in the past: now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parses_seconds_and_http_dates(value: Any, expected: float) -> None:
    assert parse_retry_after(value, now) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["", "soon", "-5", "nan", "inf", -1, float("nan"), True, None, [], "21 Oct"]
)
def test_unreadable_values_count_as_absent(value: Any) -> None:
    assert parse_retry_after(value, now) is None


@given(st.integers(0, 10**9))
def test_any_delta_seconds_round_trips(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now) == seconds


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Throttled(4), 4.0),
        (Throttled("9"), 9.0),
        (HTTPStatusError(Headers(Retry_After="11")), 11.0),
        (HTTPStatusError({"retry-after": "12"}), 12.0),
        (HTTPStatusError(Headers(Retry_After=formatdate(NOW + 60, usegmt=True))), 60.0),
        (HTTPStatusError(Headers()), None),
        (HTTPStatusError(None), None),
        (Throttled("garbage"), None),
        (ValueError("no hint"), None),
    ],
)
def test_reads_the_attribute_or_the_response_header(exc: BaseException, expected: float | None) -> None:
    assert retry_after_seconds(exc, now) == (pytest.approx(expected) if expected is not None else None)


def test_reads_urllib_errors_from_the_service(http_service: Callable[..., HTTPService]) -> None:
    service = http_service(rate=1, burst=1)
    fetch(service.url)
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch(service.url)
    assert info.value.code == 429
    assert retry_after_seconds(info.value) == 1.0


def test_reads_an_http_date_from_the_service(http_service: Callable[..., HTTPService]) -> None:
    service = http_service(rate=0.2, burst=1, retry_after="date")
    fetch(service.url)
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch(service.url)
    seconds = retry_after_seconds(info.value)
    assert seconds is not None and 0.0 <= seconds <= 6.0


# --- RetryPolicy --------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


class Flaky:
    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)

    def __call__(self, item: Any) -> Any:
        if self.errors:
            raise self.errors.pop(0)
        return item


def test_the_delay_comes_from_retry_after_capped_and_unjittered() -> None:
    rec = Recorder()
    policy = RetryPolicy(max_retries=3, max_delay=10.0, jitter=False, sleep=rec.sleep)
    outcome = policy.run(Flaky(Throttled(2.5), Throttled(99), ValueError("x")), "item")
    assert outcome.ok and outcome.attempts == 4
    assert rec.sleeps == [2.5, 10.0, 0.4]  # the third: the policy's own backoff, 0.1 * 2**2


def test_retry_after_false_keeps_the_policy_backoff() -> None:
    rec = Recorder()
    policy = RetryPolicy(max_retries=1, initial_delay=0.2, jitter=False, retry_after=False, sleep=rec.sleep)
    assert policy.run(Flaky(Throttled(30)), 1).ok
    assert rec.sleeps == [0.2]
    assert "retry_after=False" in repr(policy)


def test_a_retry_after_pauses_the_shared_limiter_even_on_the_last_attempt() -> None:
    rec = Recorder()
    policy = RetryPolicy(max_retries=1, sleep=rec.sleep)
    outcome = call_with_retry(Flaky(Throttled(3), Throttled(4)), 1, policy, pacer=rec)
    assert not outcome.ok and outcome.attempts == 2
    assert rec.pauses == [3.0, 4.0] and rec.sleeps == [3.0]


def test_call_honours_retry_after_too() -> None:
    rec = Recorder()
    policy = RetryPolicy(max_retries=1, sleep=rec.sleep)
    assert policy.call(Flaky(HTTPStatusError(Headers(Retry_After="6"))), 5) == 5
    assert rec.sleeps == [6.0]


def test_policy_with_retry_after_validates_and_pickles() -> None:
    with pytest.raises(ValueError, match="retry_after=1"):
        RetryPolicy(retry_after=1)  # type: ignore[arg-type]
    policy = RetryPolicy(retry_after=False)
    copy = pickle.loads(pickle.dumps(policy))
    assert copy == policy and copy.retry_after is False
    assert copy != RetryPolicy()


def test_a_rate_limit_is_a_pacer_for_the_policy() -> None:
    from amorsize.pacing import RateLimit

    clock = Recorder()
    limit = RateLimit(100, clock=lambda: 50.0, sleep=clock.sleep)
    policy = RetryPolicy(max_retries=0)
    call_with_retry(Flaky(Throttled(2)), 1, policy, pacer=limit)
    assert limit._process_state().paused_until() == 52.0
    limit.close()
