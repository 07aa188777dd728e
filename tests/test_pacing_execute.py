"""RateLimit inside amorsize's own runs: execute()/imap() and capture() in a user's pool.

The rate is checked on the service's arrivals (a token bucket of the same rate
answers no 429), on the workers' start times (no 1-second window above the limit
plus one late start per worker) and on the elapsed time (not sooner than the rate
allows: unshared, WORKERS workers would finish in a third of it).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any, Callable

import pytest
from _http_service import HTTPService, max_in_window, max_overlap
from _pacing_workers import RATE, fetch_ok, hold, timed_get

from amorsize import (
    DeadLetterQueue,
    DLQPolicy,
    RateLimit,
    RetryPolicy,
    SharedDeadLetterQueue,
    execute,
    imap,
    is_failure,
)
from amorsize.errors import InvalidTypeError, RateLimitTimeoutError

WORKERS = 3
CALLS = 40  # 1 s at RATE=40/s

pytestmark = [pytest.mark.usefixtures("no_leaked_children"), pytest.mark.timeout(120)]


def check_paced(service: HTTPService, results: list[tuple[float, int]], elapsed: float) -> None:
    starts = sorted(start for start, _ in results)
    assert [status for _, status in results] == [200] * len(results)
    assert service.statuses() == {200: len(results)}
    assert max_in_window(starts, 1.0) <= RATE + WORKERS
    assert elapsed >= (len(results) - 1) / RATE - 0.01


def test_execute_holds_one_rate_across_its_workers(
    start_method: str, http_service: Callable[..., HTTPService]
) -> None:
    service = http_service(rate=RATE, burst=WORKERS + 2)
    limit = RateLimit(RATE)
    begin = time.monotonic()
    results = execute(timed_get, [service.url] * CALLS, n_jobs=WORKERS, chunksize=1,
                      rate_limit=limit, start_method=start_method)
    check_paced(service, results, time.monotonic() - begin)
    limit.close()


def test_imap_holds_the_rate_and_retries_count_as_calls(http_service: Callable[..., HTTPService]) -> None:
    # A service that fails a third of the admitted calls with 500: retries go through
    # the limit too, so the server still never sees more than the rate.
    service = http_service(rate=RATE, burst=WORKERS + 2, error_share=0.3, seed=3)
    limit = RateLimit(RATE)
    retry = RetryPolicy(max_retries=10, initial_delay=0.0, jitter=False)
    begin = time.monotonic()
    starts = list(imap(fetch_ok, [service.url] * CALLS, n_jobs=WORKERS, chunksize=2,
                       rate_limit=limit, retry=retry))
    elapsed = time.monotonic() - begin
    statuses = service.statuses()
    assert statuses.get(429, 0) == 0 and statuses[200] == CALLS and statuses.get(500, 0) > 0
    calls = sum(statuses.values())
    assert elapsed >= (calls - 1) / RATE - 0.01
    assert max_in_window(service.arrivals(), 1.0) <= RATE + WORKERS
    assert len(starts) == CALLS
    limit.close()


def test_max_concurrent_caps_calls_across_workers_measured_from_timestamps() -> None:
    limit = RateLimit(1000, max_concurrent=2)
    begin = time.monotonic()
    spans = execute(hold, [0.1] * 8, n_jobs=4, chunksize=1, rate_limit=limit)
    elapsed = time.monotonic() - begin
    assert max_overlap(spans) <= 2
    assert elapsed >= 8 * 0.1 / 2 - 0.01  # 4 workers at once would take half that
    limit.close()


def test_a_retry_after_pauses_every_worker(http_service: Callable[..., HTTPService]) -> None:
    # The limit is twice the server's rate: 429s come back with "Retry-After: 1", and
    # each pauses the shared limiter, so no worker calls in the second that follows
    # (beyond calls that had already started when the 429 arrived).
    service = http_service(rate=20, burst=2)
    limit = RateLimit(40)
    retry = RetryPolicy(max_retries=10, initial_delay=0.01, max_delay=2.0, jitter=False)
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    out = execute(fetch_ok, [service.url] * 60, n_jobs=WORKERS, chunksize=1, rate_limit=limit,
                  retry=retry, dlq=dlq)
    assert len(dlq) == 0 and not any(is_failure(v) for v in out)
    throttled = service.arrivals(429)
    assert throttled, "the limit is above the server's rate: some calls must be throttled"
    arrivals = service.arrivals()
    first = throttled[0]
    quiet = [t for t in arrivals if first + 0.1 < t < first + 0.9]
    assert quiet == []
    limit.close()


def test_a_call_waiting_for_the_limit_respects_the_item_timeout() -> None:
    # One call per 30 s: one item starts at once, the others would wait far past
    # their 1-s timeout, so they fail with RateLimitTimeoutError when it passes.
    limit = RateLimit(1, per=30.0)
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    begin = time.monotonic()
    out = execute(abs, [-1, -2, -3], n_jobs=3, chunksize=1, rate_limit=limit, timeout=1.0, dlq=dlq)
    assert time.monotonic() - begin < 10
    done = [v for v in out if not is_failure(v)]
    assert len(done) == 1 and done[0] in (1, 2, 3)  # whichever worker asked first
    assert [e.error_type for e in dlq.get_entries()] == ["RateLimitTimeoutError"] * 2
    assert issubclass(RateLimitTimeoutError, TimeoutError)
    limit.close()


def test_rate_limit_is_type_checked() -> None:
    with pytest.raises(InvalidTypeError, match="rate_limit"):
        execute(abs, [1], rate_limit=50)


def test_capture_paces_a_users_pool(
    start_method: str, tmp_path: Any, http_service: Callable[..., HTTPService]
) -> None:
    service = http_service(rate=RATE, burst=WORKERS + 2)
    limit = RateLimit(RATE)
    with SharedDeadLetterQueue(DLQPolicy(directory=str(tmp_path))) as dlq:
        hook = dlq.capture(timed_get, rate_limit=limit)
        with multiprocessing.get_context(start_method).Pool(WORKERS) as pool:
            pool.map(abs, range(WORKERS))
            begin = time.monotonic()
            results = pool.map(hook, [service.url] * CALLS, chunksize=1)
            elapsed = time.monotonic() - begin
        assert len(dlq) == 0
    check_paced(service, results, elapsed)
    limit.close()


def test_capture_refuses_a_rate_limit_that_is_not_one(tmp_path: Any) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=str(tmp_path))) as dlq, pytest.raises(
        InvalidTypeError, match="rate_limit"
    ):
        dlq.capture(abs, rate_limit=3)
