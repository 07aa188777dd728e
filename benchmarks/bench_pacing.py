"""One RateLimit for a whole pool, against a rate-limited HTTP service (phase 1: a user's own Pool).

    python benchmarks/bench_pacing.py              # about a minute and a half
    python benchmarks/bench_pacing.py --seconds 5  # shorter rate runs

The service (tests/_http_service.py) admits RATE requests/s from a token bucket of
SERVICE_BURST and answers 429 with Retry-After beyond that. Rows:

* **shared**: ``multiprocessing.Pool(n)`` mapping ``RateLimit(RATE)(get)`` for n in
  --workers, ``RATE * seconds`` calls. Targets: achieved rate (server arrivals) within
  3% of RATE; no 1-second window above RATE + SERVICE_BURST; no 429.
* **no limiter**: the same pool calling as fast as it can: how many 429s.
* **uneven work**: 25% of items also do UNEVEN_EXTRA s of local work after the call.
  A shared limit lets idle workers use the budget; a per-worker limit (RATE / n each,
  the usual workaround) cannot, so it is slower.
* **overhead**: a call through an unthrottled RateLimit minus a bare call (<= 20 us).
* **CPU while throttled**: workers waiting on a slow limit use <= 2% of one core.

Prints PASS/FAIL with ratios; asserts nothing (performance is measured, not tested).
The HTTP client is urllib (``requests`` is not a dependency of the project).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import random
import sys
import time
import timeit
from typing import Any, Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
# Benchmark this checkout, and share the test suite's service rather than copy it.
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]

import psutil  # noqa: E402
from _http_service import HTTPService, get, max_in_window  # noqa: E402

from amorsize import RateLimit  # noqa: E402

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


def achieved(service: HTTPService) -> Tuple[float, int, int]:
    """(rate between the first and last arrival, most arrivals in a 1-s window, 429s)."""
    times = service.arrivals()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return rate, max_in_window(times, 1.0), service.statuses().get(429, 0)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def shared_row(workers: int, seconds: float) -> bool:
    limit = RateLimit(RATE)
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [(service.url, 0.0)] * int(RATE * seconds)
        run_pool(workers, functools.partial(step, limit(get)), items)
        rate, window, throttled = achieved(service)
    limit.close()
    ok_rate = abs(rate / RATE - 1) <= RATE_TOLERANCE
    ok_window = window <= RATE + SERVICE_BURST
    print(
        f"shared      n={workers}: {rate:7.1f} req/s ({rate / RATE:.3f} x limit) {verdict(ok_rate)}; "
        f"max 1-s window {window} (<= {RATE + SERVICE_BURST}) {verdict(ok_window)}; "
        f"429s {throttled} {verdict(throttled == 0)}"
    )
    return ok_rate and ok_window and throttled == 0


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


def uneven_rows(seconds: float) -> bool:
    rng = random.Random(7)
    results = {}
    limit = RateLimit(RATE)
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [
            (service.url, UNEVEN_EXTRA if rng.random() < UNEVEN_SHARE else 0.0)
            for _ in range(int(RATE * seconds))
        ]
        shared = len(items) / run_pool(UNEVEN_WORKERS, functools.partial(step, limit(get)), items)
        results["shared"] = (shared, service.statuses().get(429, 0))
    limit.close()
    with HTTPService(RATE, SERVICE_BURST, latency=LATENCY) as service:
        items = [(service.url, extra) for _, extra in items]
        per_worker = len(items) / run_pool(
            UNEVEN_WORKERS,
            functools.partial(step, per_worker_get),
            items,
            init_per_worker,
            (RATE // UNEVEN_WORKERS,),
        )
        results["per-worker"] = (per_worker, service.statuses().get(429, 0))
    for name, (rate, throttled) in results.items():
        print(f"uneven      n={UNEVEN_WORKERS} {name:10s}: {rate:7.1f} items/s, 429s {throttled}")
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
    results = [shared_row(n, args.seconds) for n in args.workers]
    no_limiter_row(max(args.workers), 2.0)
    results.append(uneven_rows(args.seconds / 2))
    results.append(overhead_row())
    results.append(cpu_row())
    print(f"{verdict(all(results))} overall in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
