"""RateLimit across processes: users' own pools under fork, spawn and forkserver, against a real service.

Each pool test runs calls through the limit and checks the rate three ways: on the
service's arrivals (no 429 from a token bucket of the same rate), on the workers'
start times (no 1-second window above the limit, plus one late start per worker
that the machine's load may have delayed), and on the elapsed time (the calls
cannot have finished sooner than the rate allows).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable

import pytest
from _http_service import HTTPService, max_in_window, max_overlap
from _pacing_workers import (
    LIMIT,
    RATE,
    acquire_then_die,
    get_inside_with,
    hold,
    limited_get,
    state_path,
    timed_get,
)

from amorsize import _pace_state
from amorsize.errors import RateLimitTimeoutError
from amorsize.pacing import RateLimit

WORKERS = 3
CALLS = 40  # 1 s at RATE=40/s; unshared, 3 workers would take a third of that

pytestmark = pytest.mark.usefixtures("no_leaked_children")


def check_paced(service: HTTPService, results: list[tuple[float, int]], elapsed: float) -> None:
    starts = sorted(start for start, _ in results)
    assert [status for _, status in results] == [200] * len(results)
    assert service.statuses() == {200: len(results)}
    assert max_in_window(starts, 1.0) <= RATE + WORKERS
    assert elapsed >= (len(results) - 1) / RATE - 0.01


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_decorated_function_shares_one_rate_across_a_pool(
    method: str, http_service: Callable[..., HTTPService]
) -> None:
    service = http_service(rate=RATE, burst=WORKERS + 2)
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(WORKERS) as pool:
        pool.map(abs, range(WORKERS))  # workers started: time only the calls
        begin = time.monotonic()
        results = pool.map(limited_get, [service.url] * CALLS, chunksize=1)
        elapsed = time.monotonic() - begin
        assert set(pool.map(state_path, range(WORKERS * 2))) == {LIMIT.path}
    check_paced(service, results, elapsed)


def test_context_manager_on_a_module_level_limiter_under_spawn(
    start_method: str, http_service: Callable[..., HTTPService]
) -> None:
    service = http_service(rate=RATE, burst=WORKERS + 2)
    with multiprocessing.get_context(start_method).Pool(WORKERS) as pool:
        pool.map(abs, range(WORKERS))
        begin = time.monotonic()
        results = pool.map(get_inside_with, [service.url] * CALLS, chunksize=1)
        elapsed = time.monotonic() - begin
    check_paced(service, results, elapsed)


def test_a_limiter_passed_to_a_process_pool_executor(
    start_method: str, http_service: Callable[..., HTTPService]
) -> None:
    limit = RateLimit(RATE)
    service = http_service(rate=RATE, burst=WORKERS + 2)
    ctx = multiprocessing.get_context(start_method)
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
        list(pool.map(abs, range(WORKERS)))
        begin = time.monotonic()
        results = list(pool.map(limit(timed_get), [service.url] * CALLS))
        elapsed = time.monotonic() - begin
    check_paced(service, results, elapsed)
    limit.close()


def test_a_loky_pool_shares_the_rate(http_service: Callable[..., HTTPService]) -> None:
    loky = pytest.importorskip("loky")
    service = http_service(rate=RATE, burst=WORKERS + 2)
    executor = loky.get_reusable_executor(max_workers=WORKERS)
    try:
        list(executor.map(abs, range(WORKERS)))
        begin = time.monotonic()
        results = list(executor.map(limited_get, [service.url] * CALLS))
        elapsed = time.monotonic() - begin
    finally:
        executor.shutdown(wait=True, kill_workers=True)
    check_paced(service, results, elapsed)


def test_max_concurrent_caps_calls_running_across_processes(start_method: str) -> None:
    limit = RateLimit(10_000, max_concurrent=2)
    with multiprocessing.get_context(start_method).Pool(4) as pool:
        spans = pool.map(limit(hold), [0.05] * 16, chunksize=1)
    assert max_overlap(spans) == 2  # capped, and the cap is used
    limit.close()


def test_a_dead_process_gives_its_slot_back(start_method: str) -> None:
    limit = RateLimit(10_000, max_concurrent=1)
    ctx = multiprocessing.get_context(start_method)
    ready = ctx.Event()
    proc = ctx.Process(target=acquire_then_die, args=(limit, ready))
    proc.start()
    assert ready.wait(30)
    with pytest.raises(RateLimitTimeoutError):
        limit.acquire(deadline=time.monotonic() + 0.05)
    proc.join(30)
    assert proc.exitcode == 3
    limit.acquire(deadline=time.monotonic() + 5).release()
    limit.close()


def test_a_pause_from_one_process_holds_every_worker(start_method: str) -> None:
    limit = RateLimit(1000)
    with multiprocessing.get_context(start_method).Pool(WORKERS) as pool:
        pool.map(abs, range(WORKERS))
        limit.pause(0.5)
        until = time.monotonic() + 0.5 - 0.01
        spans = pool.map(limit(hold), [0.0] * 9, chunksize=1)
    assert min(start for start, _ in spans) >= until
    limit.close()


def test_no_state_is_left_behind_by_a_program_and_its_spawned_workers(tmp_path: Any) -> None:
    before = {n for n in os.listdir(_pace_state.state_root()) if n.startswith(_pace_state.DIR_PREFIX)}
    script = tmp_path / "user_program.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, sys
            from amorsize import RateLimit

            limit = RateLimit(500, max_concurrent=2)

            @limit
            def work(x):
                return limit.path

            if __name__ == "__main__":
                with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:
                    paths = set(pool.map(work, range(20)))
                assert paths == {limit.path}, (paths, limit.path)
                print("ok")
            """
        )
    )
    for method in ("spawn", "forkserver"):  # fork children inherit the object: tested above
        done = subprocess.run(
            [sys.executable, str(script), method], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    after = {n for n in os.listdir(_pace_state.state_root()) if n.startswith(_pace_state.DIR_PREFIX)}
    assert after <= before
