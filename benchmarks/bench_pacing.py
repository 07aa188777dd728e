"""One RateLimit for a whole pool, against a rate-limited HTTP service: a user's Pool and execute().

    python benchmarks/bench_pacing.py              # about three minutes
    python benchmarks/bench_pacing.py --seconds 5  # shorter rate runs

The service (tests/_http_service.py) admits RATE requests/s from a token bucket of
SERVICE_BURST and answers 429 with Retry-After beyond that. Rows:

* **shared**: ``multiprocessing.Pool(n)`` mapping ``RateLimit(RATE)(get)`` for n in
  --workers, ``RATE * seconds`` calls. Targets: achieved rate (server arrivals) within
  3% of RATE; no 1-second window above RATE + SERVICE_BURST; no 429.
* **execute**: the same through ``execute(..., n_jobs=n, rate_limit=RateLimit(RATE))``.
* **20% over**: ``execute`` with ``RateLimit(1.2 * RATE)``, a RetryPolicy and a DLQ:
  the 429s (``Retry-After: 1``) are all retried and none reaches the DLQ; also shown:
  requests arriving inside a 429's pause (after PAUSE_SLACK for the worker to read it).
* **no limiter**: the same pool calling as fast as it can: how many 429s; and
  ``execute`` without a limiter: 429s and DLQ entries.
* **uneven work**: 25% of items also do UNEVEN_EXTRA s of local work after the call.
  A shared limit lets idle workers use the budget; a per-worker limit (RATE / n each,
  the usual workaround) cannot, so it is slower.
* **overhead**: a call through an unthrottled RateLimit minus a bare call (<= 20 us),
  by decorator and per item of an in-process ``execute``.
* **CPU while throttled**: workers waiting on a slow limit use <= 2% of one core
  (a user's Pool; and ``execute``, net of the same run unthrottled).

Prints PASS/FAIL with ratios; asserts nothing (performance is measured, not tested).
The HTTP client is urllib (``requests`` is not a dependency of the project).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import random
import resource
import sys
import time
import timeit
from typing import Any, Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
# Benchmark this checkout, and share the test suite's service rather than copy it.
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]

import psutil  # noqa: E402
from _http_service import HTTPService, fetch, get, max_in_window  # noqa: E402

from amorsize import DeadLetterQueue, DLQPolicy, RateLimit, RetryPolicy, execute  # noqa: E402

#: The service's (and the limit's) rate, requests per second.
RATE = 200
#: The service's token bucket: how early a request may arrive and still be admitted.
SERVICE_BURST = 10
#: Per-request service latency (a quick API), seconds.
LATENCY = 0.002
#: Uneven work: this share of items does UNEVEN_EXTRA seconds of local work after the call.
UNEVEN_SHARE = 0.25
UNEVEN_EXTRA = 0.1
UNEVEN_WORKERS = 8
#: Targets.
RATE_TOLERANCE = 0.03
OVERHEAD_TARGET_US = 20.0
CPU_TARGET = 0.02
#: The over-limit row: the limit is this many times the service's rate.
OVER_FACTOR = 1.2
#: A request arriving this soon after a 429 had started before the pause was known.
PAUSE_SLACK = 0.05

_WORKER_LIMIT: RateLimit | None = None


# --- worker functions (module level: pools import them by name) ----------------------


def step(call: Callable[[str], int], item: Tuple[str, float]) -> int:
    """Call the service (through ``call``), then do the item's local work."""
    url, extra = item
    status = call(url)
    if extra:
        time.sleep(extra)
    return status


def init_per_worker(calls: int) -> None:
    global _WORKER_LIMIT
    _WORKER_LIMIT = RateLimit(calls)


def per_worker_get(url: str) -> int:
    assert _WORKER_LIMIT is not None
    with _WORKER_LIMIT:
        return get(url)


def per_worker_get_lazy(calls: int, url: str) -> int:
    """A per-process limit made on first use (execute has no initializer)."""
    global _WORKER_LIMIT
    if _WORKER_LIMIT is None or _WORKER_LIMIT.calls != calls:
        _WORKER_LIMIT = RateLimit(calls)
    return per_worker_get(url)


def fetch_or_raise(url: str) -> int:
    """GET ``url``; a 429 or 500 raises HTTPError (Retry-After included) for the retry policy."""
    fetch(url)
    return 200


def noop(_: Any) -> None:
    return None


# --- rows ----------------------------------------------------------------------------------


def run_pool(
    workers: int,
    func: Callable[..., Any],
    items: List[Any],
    initializer: Callable[..., Any] | None = None,
    initargs: Tuple[Any, ...] = (),
) -> float:
    """Map ``func`` over ``items`` in a fresh Pool; the seconds the map took (start-up excluded)."""
    pool = multiprocessing.Pool(workers, initializer=initializer, initargs=initargs)
    try:
        pool.map(abs, range(workers * 4), chunksize=1)
        begin = time.monotonic()
        pool.map(func, items, chunksize=1)
        return time.monotonic() - begin
    finally:
        pool.close()  # not terminate(): workers exit normally and clean up their limiters
        pool.join()


def run_execute(workers: int, func: Callable[..., Any], items: List[Any], **options: Any) -> float:
    """``execute`` over ``items``, chunk sizes adaptive as by default (worker start-up included)."""
    begin = time.monotonic()
    execute(func, items, n_jobs=workers, **options)
    return time.monotonic() - begin


def achieved(service: HTTPService) -> Tuple[float, int, int]:
    """(rate between the first and last arrival, most arrivals in a 1-s window, 429s)."""
    times = service.arrivals()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return rate, max_in_window(times, 1.0), service.statuses().get(429, 0)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def shared_row(workers: int, seconds: float, via: str = "Pool") -> bool:
    limit = RateLimit(RATE)
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [(service.url, 0.0)] * int(RATE * seconds)
        if via == "Pool":
            run_pool(workers, functools.partial(step, limit(get)), items)
        else:
            run_execute(workers, functools.partial(step, get), items, rate_limit=limit)
        rate, window, throttled = achieved(service)
    limit.close()
    ok_rate = abs(rate / RATE - 1) <= RATE_TOLERANCE
    ok_window = window <= RATE + SERVICE_BURST
    print(
        f"{via:7s} shared n={workers}: {rate:7.1f} req/s ({rate / RATE:.3f} x limit) {verdict(ok_rate)}; "
        f"max 1-s window {window} (<= {RATE + SERVICE_BURST}) {verdict(ok_window)}; "
        f"429s {throttled} {verdict(throttled == 0)}"
    )
    return ok_rate and ok_window and throttled == 0


def over_limit_row(workers: int, seconds: float) -> bool:
    """The limit 20% above the service's: every 429 retried after Retry-After, none dead-lettered."""
    limit = RateLimit(int(RATE * OVER_FACTOR))
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    retry = RetryPolicy(max_retries=10, initial_delay=0.01, max_delay=5.0)
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        n = int(RATE * seconds)
        run_execute(workers, fetch_or_raise, [service.url] * n, rate_limit=limit, retry=retry, dlq=dlq)
        statuses, arrivals = service.statuses(), service.arrivals()
        throttled = [hit.departure for hit in list(service.hits) if hit.status == 429]
    limit.close()
    # Retry-After is whole seconds (>= 1): once a 429 has left the server, every worker
    # should pause until a second after it arrived (a loaded machine delays the worker's
    # reading of the 429 beyond PAUSE_SLACK: information, not a target).
    early = sum(1 for t in throttled for a in arrivals if t + PAUSE_SLACK < a < t + 1.0 - LATENCY)
    ok = statuses.get(200, 0) == n and len(dlq) == 0
    print(
        f"execute 20% over n={workers}: {statuses.get(200, 0)}/{n} ok, 429s {len(throttled)} all "
        f"retried, DLQ {len(dlq)} {verdict(ok)}; arrivals inside a Retry-After pause {early}"
    )
    return ok


def execute_no_limiter_row(workers: int, seconds: float) -> None:
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        n = int(RATE * seconds)
        elapsed = run_execute(workers, fetch_or_raise, [service.url] * n, dlq=dlq)
        throttled = service.statuses().get(429, 0)
    print(f"execute no limiter n={workers}: {n / elapsed:7.1f} req/s sent, 429s {throttled} of {n}, "
          f"DLQ entries {len(dlq)}")


def no_limiter_row(workers: int, seconds: float) -> None:
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [(service.url, 0.0)] * int(RATE * seconds)
        elapsed = run_pool(workers, functools.partial(step, get), items)
        statuses = service.statuses()
    share = statuses.get(429, 0) / max(1, sum(statuses.values()))
    print(
        f"no limiter  n={workers}: {len(items) / elapsed:7.1f} req/s sent, "
        f"429s {statuses.get(429, 0)} of {len(items)} ({share:.0%})"
    )


def uneven_rows(seconds: float, via: str = "Pool") -> bool:
    rng = random.Random(7)
    results = {}
    limit = RateLimit(RATE)
    per_calls = RATE // UNEVEN_WORKERS
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [
            (service.url, UNEVEN_EXTRA if rng.random() < UNEVEN_SHARE else 0.0)
            for _ in range(int(RATE * seconds))
        ]
        if via == "Pool":
            took = run_pool(UNEVEN_WORKERS, functools.partial(step, limit(get)), items)
        else:
            took = run_execute(UNEVEN_WORKERS, functools.partial(step, get), items, rate_limit=limit)
        shared = len(items) / took
        results["shared"] = (shared, service.statuses().get(429, 0))
    limit.close()
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [(service.url, extra) for _, extra in items]
        if via == "Pool":
            took = run_pool(UNEVEN_WORKERS, functools.partial(step, per_worker_get), items,
                            init_per_worker, (per_calls,))
        else:
            func = functools.partial(step, functools.partial(per_worker_get_lazy, per_calls))
            took = run_execute(UNEVEN_WORKERS, func, items)
        per_worker = len(items) / took
        results["per-worker"] = (per_worker, service.statuses().get(429, 0))
    for name, (rate, throttled) in results.items():
        print(f"{via:7s} uneven n={UNEVEN_WORKERS} {name:10s}: {rate:7.1f} items/s, 429s {throttled}")
    ok = shared > per_worker
    print(f"  shared / per-worker throughput: {shared / per_worker:.2f}x {verdict(ok)}")
    return ok


def overhead_row() -> bool:
    limit = RateLimit(10**9)
    wrapped = limit(noop)
    number = 20_000
    bare = min(timeit.repeat(lambda: noop(None), number=number, repeat=5)) / number
    paced = min(timeit.repeat(lambda: wrapped(None), number=number, repeat=5)) / number
    limit.close()
    cost = (paced - bare) * 1e6
    ok = cost <= OVERHEAD_TARGET_US
    print(f"overhead: {cost:.1f} us per call (<= {OVERHEAD_TARGET_US:.0f} us) {verdict(ok)}")
    return ok


def execute_overhead_row(n: int = 20_000) -> bool:
    """Per item of an in-process execute: with an unthrottled limit minus without."""
    limit = RateLimit(10**9)
    items = list(range(n))
    bare = min(run_execute(1, noop, items, backend="in_process") for _ in range(3)) / n
    paced = min(run_execute(1, noop, items, backend="in_process", rate_limit=limit)
                for _ in range(3)) / n
    limit.close()
    cost = (paced - bare) * 1e6
    ok = cost <= OVERHEAD_TARGET_US
    print(f"execute overhead: {cost:.1f} us per item (<= {OVERHEAD_TARGET_US:.0f} us) {verdict(ok)}")
    return ok


def execute_cpu_row(workers: int = 4, calls: int = 60, rate: int = 20) -> bool:
    """CPU of execute's workers (reaped children) while throttled, net of the same run unthrottled."""
    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = children_cpu()
    run_execute(workers, noop, list(range(calls)), rate_limit=RateLimit(10**9))
    baseline = children_cpu() - before
    limit = RateLimit(rate)
    before = children_cpu()
    wall = run_execute(workers, noop, list(range(calls)), rate_limit=limit)
    used = children_cpu() - before - baseline
    limit.close()
    share = max(0.0, used) / wall
    ok = share <= CPU_TARGET
    print(f"execute CPU while throttled: {share:.2%} of one core for {workers} workers over "
          f"{wall:.1f} s (<= {CPU_TARGET:.0%}) {verdict(ok)}")
    return ok


def cpu_row(workers: int = 4, calls: int = 60, rate: int = 20) -> bool:
    limit = RateLimit(rate)
    with multiprocessing.Pool(workers) as pool:
        pool.map(abs, range(workers * 4), chunksize=1)
        children = psutil.Process().children()
        before = sum(sum(c.cpu_times()[:2]) for c in children)
        begin = time.monotonic()
        pool.map(limit(noop), range(calls), chunksize=1)
        wall = time.monotonic() - begin
        used = sum(sum(c.cpu_times()[:2]) for c in children) - before
    limit.close()
    share = used / wall
    ok = share <= CPU_TARGET
    print(
        f"CPU while throttled: {share:.2%} of one core for {workers} waiting workers "
        f"over {wall:.1f} s (<= {CPU_TARGET:.0%}) {verdict(ok)}"
    )
    return ok


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each shared-rate run")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"RateLimit({RATE}) vs a service admitting {RATE}/s (bucket {SERVICE_BURST})")
    print(f"cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    results = [shared_row(n, args.seconds, via) for via in ("Pool", "execute") for n in args.workers]
    results.append(over_limit_row(max(args.workers), args.seconds / 2))
    no_limiter_row(max(args.workers), 2.0)
    execute_no_limiter_row(max(args.workers), 2.0)
    results.extend(uneven_rows(args.seconds / 2, via) for via in ("Pool", "execute"))
    results.extend([overhead_row(), execute_overhead_row(), cpu_row(), execute_cpu_row()])
    print(f"{verdict(all(results))} overall in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
