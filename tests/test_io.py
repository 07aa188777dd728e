"""I/O-bound work: the threads backend and async def functions, against the local HTTP service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Any, List

import pytest
from _aio_http import HTTPStatusError, aget
from _http_service import get

from amorsize import (
    BlockedLoopWarning,
    DeadLetterQueue,
    DLQPolicy,
    InvalidArgumentError,
    RateLimit,
    RetryPolicy,
    _aio,
    execute,
    imap,
    is_failure,
    replay_failed_items,
)

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"rate": 1e6, "burst": 10**6}


def memory_dlq() -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))


def sync_fetch(url: str) -> int:
    status = get(url)
    if status != 200:
        raise HTTPStatusError(status)
    return status


async def async_fetch(url: str) -> int:
    return await aget(url)


def check_conservation(urls: List[str], values: List[Any], dlq: DeadLetterQueue, service: Any) -> None:
    """Every URL ends once: 200 as its result, a 500 as exactly one DLQ entry."""
    assert len(values) == len(urls)
    entries = dlq.get_entries()
    failed = [i for i, v in enumerate(values) if is_failure(v)]
    assert sorted(e.metadata["index"] for e in entries) == failed
    assert sorted(e.item for e in entries) == sorted(urls[i] for i in failed)
    assert all(v == 200 for v in values if not is_failure(v))
    assert all(e.error_type == "HTTPStatusError" for e in entries)
    assert len(failed) == service.statuses().get(500, 0)  # each request made once, no retry


@pytest.mark.parametrize("func, backend", [
    (sync_fetch, "threads"),
    (async_fetch, "in_process"),
    (async_fetch, "threads"),
    (async_fetch, "processes"),
])
def test_every_request_ends_once(http_service, no_leaked_children, func, backend) -> None:
    service = http_service(**FAST, error_share=0.1, latency=0.01, seed=3)
    urls = [f"{service.url}/item/{i}" for i in range(120)]
    dlq = memory_dlq()
    n_jobs = 2 if backend in ("processes", "threads") else None
    # A few in flight per loop: the test service listens with socketserver's backlog of 5.
    concurrency = 4 if func is async_fetch else None
    values = execute(func, urls, backend=backend, n_jobs=n_jobs, dlq=dlq, start_method="fork",
                     concurrency=concurrency)
    check_conservation(urls, values, dlq, service)
    assert 0 < len(dlq.get_entries()) < len(urls)


def test_async_items_really_overlap(http_service) -> None:
    service = http_service(**FAST, latency=0.2)
    urls = [f"{service.url}/item/{i}" for i in range(40)]
    start = time.monotonic()
    # One chunk, so the count measures the event loop's overlap, not the chunking.
    values = execute(async_fetch, urls, concurrency=20, chunksize=40, n_jobs=1)
    assert values == [200] * 40
    # Sequential would be 1 (and take 8 s). The test server's accept loop caps what a
    # loaded 2-core machine lets overlap at about 8, so the bound proves overlap, not 20.
    assert service.max_in_flight() >= 5
    assert time.monotonic() - start < 40 * 0.2 / 2


_cancelled: List[int] = []


async def hangs_on_three(x: int) -> int:
    try:
        await asyncio.sleep(30 if x == 3 else 0.01)
    finally:
        if x == 3:
            _cancelled.append(x)
    return x


def test_async_timeout_cancels_the_task() -> None:
    _cancelled.clear()
    dlq = memory_dlq()
    start = time.monotonic()
    values = execute(hangs_on_three, range(8), timeout=0.3, dlq=dlq, backend="in_process")
    assert time.monotonic() - start < 10
    assert [v for v in values if not is_failure(v)] == [0, 1, 2, 4, 5, 6, 7]
    (entry,) = dlq.get_entries()
    assert entry.reason == "timeout" and entry.item == 3 and entry.error_type == "ItemTimeoutError"
    assert _cancelled == [3]  # the coroutine's finally ran: a real cancellation


def test_async_timeout_in_worker_processes_kills_no_worker(no_leaked_children) -> None:
    dlq = memory_dlq()
    values = execute(hangs_on_three, range(8), timeout=0.3, dlq=dlq, n_jobs=2, start_method="fork")
    assert [e.reason for e in dlq.get_entries()] == ["timeout"]
    assert is_failure(values[3]) and values[3].reason == "timeout"


def sleeps_on_two(x: int) -> int:
    time.sleep(30 if x == 2 else 0.01)
    return x


def test_threads_timeout_dead_letters_and_abandons_the_thread() -> None:
    dlq = memory_dlq()
    start = time.monotonic()
    values = execute(sleeps_on_two, range(6), backend="threads", n_jobs=2, timeout=0.3, dlq=dlq)
    assert time.monotonic() - start < 10
    assert [v for v in values if not is_failure(v)] == [0, 1, 3, 4, 5]
    (entry,) = dlq.get_entries()
    assert entry.reason == "timeout" and entry.item == 2
    assert "abandoned" in entry.error_message


def test_the_interpreter_does_not_wait_for_an_abandoned_thread() -> None:
    script = textwrap.dedent("""
        import time
        from amorsize import execute, is_failure
        def slow(x):
            time.sleep(60 if x == 0 else 0)
            return x
        out = execute(slow, range(3), backend="threads", timeout=0.2, on_failure=lambda e: None)
        print(sum(map(is_failure, out)))
    """)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert time.monotonic() - start < 20  # not the 60 s the abandoned thread sleeps


_attempts: dict = {}


async def fails_once(x: int) -> int:
    _attempts[x] = _attempts.get(x, 0) + 1
    if _attempts[x] == 1:
        raise ConnectionError("first attempt")
    return x


def test_async_retries_do_not_block_the_loop() -> None:
    _attempts.clear()
    retry = RetryPolicy(max_retries=1, initial_delay=0.5, jitter=False)
    start = time.monotonic()
    values = execute(fails_once, range(100), retry=retry, concurrency=100, backend="in_process")
    elapsed = time.monotonic() - start
    assert values == list(range(100)) and set(_attempts.values()) == {2}
    assert elapsed < 5  # about 0.5 s; 50 s if each wait blocked the loop


def test_rate_limit_applies_across_loops_and_processes(http_service, no_leaked_children) -> None:
    service = http_service(**FAST, latency=0.05)
    limit = RateLimit(1000, max_concurrent=4)
    limited = limit(async_fetch)
    urls = [f"{service.url}/item/{i}" for i in range(40)]
    values = execute(limited, urls, n_jobs=2, concurrency=20, start_method="fork", dry_run=False)
    assert values == [200] * 40
    assert service.max_in_flight() <= 4
    assert service.max_in_flight() >= 2  # the limit, not a serial run


async def blocks_the_loop(x: int) -> int:
    if x == 0:
        time.sleep(1.3)  # the user's bug: a blocking call in a coroutine
    await asyncio.sleep(0)
    return x


def test_a_blocked_loop_is_reported_once() -> None:
    _aio.reset_blocked_warning()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert execute(blocks_the_loop, range(4), backend="in_process") == [0, 1, 2, 3]
        execute(blocks_the_loop, range(2), backend="in_process")
    assert [w.category for w in seen if issubclass(w.category, BlockedLoopWarning)] == [BlockedLoopWarning]


def test_concurrency_is_for_async_functions_only() -> None:
    with pytest.raises(InvalidArgumentError, match="concurrency"):
        execute(abs, [1], concurrency=10)
    with pytest.raises(InvalidArgumentError, match="concurrency"):
        execute(async_fetch, [], concurrency=0)


async def spins(x: int) -> int:
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:  # CPU, no await: the loop runs one item at a time
        pass
    return x


def test_sizing_one_loop_for_io_one_per_core_for_cpu(http_service, no_leaked_children) -> None:
    from amorsize.backends import ChunkResult, ChunkSpec, ChunkTask
    from amorsize.backends.aio import run_async_chunk
    from amorsize.run.aio import widen_async
    from amorsize.run.options import RunOptions
    from amorsize.sizing.aio import CPU_DOMINANT_SHARE, cpu_share
    from amorsize.sizing.measure import usable_cores

    service = http_service(**FAST, latency=0.05)
    urls = [f"{service.url}/item/{i}" for i in range(8)]
    waited = run_async_chunk(ChunkSpec(async_fetch, None, True, "f", concurrency=8), ChunkTask(0, 0, urls))
    computed = run_async_chunk(ChunkSpec(spins, None, True, "f", concurrency=8),
                               ChunkTask(0, 0, list(range(8))))
    io_share = cpu_share(waited.cpu_seconds, waited.compute_seconds)
    cpu_bound = cpu_share(computed.cpu_seconds, computed.compute_seconds)
    # The machine may be loaded (CPU share below 1), but waiting is far below computing.
    assert io_share < CPU_DOMINANT_SHARE and cpu_bound > 2 * io_share
    assert widen_async(waited, 100, RunOptions()).n_jobs == 1
    hot = ChunkResult(0, 0, [], [], compute_seconds=1.0, cpu_seconds=0.9)
    assert widen_async(hot, 100, RunOptions()).n_jobs == usable_cores()
    assert widen_async(hot, 1, RunOptions()).n_jobs == 1
    # End to end: the default run probes, then keeps one worker's loop busy with many in flight.
    many = [f"{service.url}/item/{i}" for i in range(60)]
    assert execute(async_fetch, many, concurrency=30) == [200] * 60
    assert service.max_in_flight() >= 10


def test_progress_and_imap_with_async() -> None:
    seen: List[int] = []
    out = list(imap(hangs_on_three, [0, 1, 2], ordered=False, on_progress=lambda d, t: seen.append(d)))
    assert sorted(out) == [0, 1, 2] and seen[-1] == 3


def test_replay_accepts_async_functions_and_threads(http_service) -> None:
    service = http_service(**FAST, error_share=1.0)
    dlq = memory_dlq()
    urls = [f"{service.url}/item/{i}" for i in range(6)]
    execute(async_fetch, urls, dlq=dlq, dry_run=False)
    assert len(dlq.get_entries()) == 6
    service.error_share = 0.0
    results, still = replay_failed_items(dlq, async_fetch)  # serially, on a loop here
    assert results == [200] * 6 and still == []
    service.error_share = 1.0
    execute(sync_fetch, urls[:3], dlq=dlq, backend="threads")
    service.error_share = 0.0
    # Recorded for sync_fetch: a replay with another function names them all.
    results, still = replay_failed_items(dlq, async_fetch, backend="threads", function=None)
    assert results == [200] * 3 and not dlq.get_entries()


def test_ctrl_c_stops_an_async_run() -> None:
    script = textwrap.dedent("""
        import asyncio, sys
        from amorsize import execute
        async def slow(x):
            await asyncio.sleep(0.5)
            return x
        print("started", flush=True)
        try:
            execute(slow, range(10_000), concurrency=10, dry_run=False)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        assert proc.wait(timeout=10) == 130
        assert time.monotonic() - start < 5
        assert proc.stdout.read().strip() == "interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def always_down(x: int) -> int:
    await asyncio.sleep(0.001)
    raise ConnectionError("service down")


@pytest.mark.parametrize("backend", ["in_process", "threads"])
def test_the_breaker_gates_async_and_threads(backend) -> None:
    from amorsize import CircuitBreaker

    dlq = memory_dlq()
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=60)
    func = always_down if backend == "in_process" else sync_down
    values = execute(func, range(200), circuit_breaker=breaker, dlq=dlq, backend=backend, dry_run=False)
    reasons = [v.reason for v in values]
    assert reasons.count("exception") == 5  # the breaker admits no more than it takes to open
    assert reasons.count("circuit_open") == 195
    assert len(dlq.get_entries()) == 200


def sync_down(x: int) -> int:
    raise ConnectionError("service down")


_checkpoint_calls: List[int] = []


async def record_call(x: int) -> int:
    _checkpoint_calls.append(x)
    if x == 150 and len(_checkpoint_calls) < 1000:
        raise KeyboardInterrupt  # the first run is killed part-way
    return x


def test_an_async_run_resumes_from_its_checkpoint(tmp_path) -> None:
    from amorsize import Checkpoint

    _checkpoint_calls.clear()
    path = str(tmp_path / "run.ckpt")
    with pytest.raises(KeyboardInterrupt):
        execute(record_call, range(300), chunksize=50, concurrency=5, backend="in_process",
                checkpoint=Checkpoint(path, every_items=1, every_seconds=None))
    first = len(_checkpoint_calls)
    _checkpoint_calls.extend([0] * 1000)  # let item 150 pass now
    values = execute(record_call, range(300), chunksize=50, concurrency=5, backend="in_process",
                     checkpoint=Checkpoint(path, every_items=1, every_seconds=None))
    assert values == list(range(300))
    assert len(_checkpoint_calls) - 1000 - first < 300  # finished chunks were not run again


ASYNC_FIX = '''
import asyncio

async def fixed(item):
    await asyncio.sleep(0.01)
    if item % 2:
        raise LookupError(f"still odd: {item}")
    return item
'''


@pytest.mark.parametrize("options", [[], ["--backend", "threads", "--n-jobs", "4"], ["--n-jobs", "2"]])
def test_cli_replay_runs_async_functions(tmp_path, options) -> None:
    from test_cli import entry_for, read_dlq, run_cli, write_dlq

    (tmp_path / "afix.py").write_text(ASYNC_FIX)
    write_dlq(tmp_path / "q", [entry_for(i, ValueError(f"bad {i}")) for i in range(6)])
    done = run_cli("dlq", "replay", tmp_path / "q", "--func", "afix:fixed", *options, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # 1: some items still fail
    assert "recovered:     3" in done.stdout and "still failing: 3" in done.stdout
    left = read_dlq(tmp_path / "q")
    assert [e.item for e in left] == [1, 3, 5]
    assert all(e.error_type == "LookupError" for e in left)


def test_an_async_spec_pickles_and_runs_through_run_chunk() -> None:
    import pickle

    from amorsize.backends import ChunkSpec, ChunkTask, encode_result, run_chunk

    spec = ChunkSpec(hangs_on_three, None, True, "hangs_on_three", concurrency=4, timeout=0.2)
    assert pickle.loads(pickle.dumps(spec)) == spec
    result = pickle.loads(encode_result(run_chunk(spec, ChunkTask(0, 10, [1, 2, 3])), spec))
    assert result.values[:2] == [1, 2] and result.values[2].reason == "timeout"
    assert [e.metadata["index"] for e in result.failures] == [12]


def test_async_detection_sees_every_kind_of_coroutine_function() -> None:
    """The plain-def shortcut of is_async_callable must not hide a coroutine function."""
    import functools
    import inspect

    from amorsize._aio import is_async_callable
    from amorsize.pacing import RateLimit

    async def native(x: int) -> int:
        return x

    def plain(x: int) -> int:
        return x

    @functools.wraps(native)
    def wrapper(x: int) -> Any:
        return native(x)

    class AsyncCall:
        async def __call__(self, x: int) -> int:
            return x

    assert is_async_callable(native)
    assert is_async_callable(functools.partial(native))
    assert is_async_callable(AsyncCall())
    assert is_async_callable(RateLimit(10, per=1.0)(native))
    assert not is_async_callable(plain)
    assert not is_async_callable(wrapper)  # a sync def that returns a coroutine is not marked
    if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+
        assert is_async_callable(inspect.markcoroutinefunction(wrapper))
