"""Worker side of ``async def`` functions: one chunk on the worker thread's event loop.

```
 run_chunk(spec, task)  ── spec.concurrency set ──►  run_async_chunk(spec, task)
                                                        │ this thread's loop (amorsize._aio)
                                                        ▼
     lanes = min(concurrency, len(items)) coroutines, each taking the next position:
        [wait_for(timeout)]  call_with_retry_async(func, item, retry)
             ok → value      error → DLQEntry (exception)      timeout → DLQEntry (timeout)
     + watch_loop(): warns once when a blocking call stalled the loop > 1 s
```

Every backend gets this for free: a worker process, a worker thread and the
caller's thread (``in_process``) all call :func:`run_chunk`, which hands a
coroutine function's chunk here. So ``n_jobs`` loops each keep up to
``concurrency`` items in flight: ``n_jobs * concurrency`` in all.

Lanes, not a task per item behind a semaphore: the same bound on what is in
flight, and no thousand waiting tasks per chunk. A timeout is a real
cancellation: the item's task is cancelled (its ``finally`` blocks run), the item
is dead-lettered ``timeout``, and the lane moves on; no worker is killed.

A RateLimit given to the run (``spec.rate_limit``, when the run carries one) or
decorating the function is awaited with :meth:`RateLimit.acquire_async`, so items
waiting for it never block the loop; it is one limit across every loop and worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, List, Optional

from amorsize import _aio
from amorsize.backends import ChunkResult, ChunkSpec, ChunkTask
from amorsize.dlq.entry import DLQEntry
from amorsize.errors import ItemTimeoutError
from amorsize.failure import failure_entry, failure_of
from amorsize.retry import RetryOutcome, call_with_retry_async

#: Items each event loop keeps in flight when ``execute(concurrency=None)``: the
#: default connection limit of aiohttp's ``TCPConnector`` (100); more than most
#: services allow one client, and enough to hide 20-200 ms latencies.
DEFAULT_CONCURRENCY = 100
#: With ``chunksize=None`` an async chunk holds this many rounds of ``concurrency``
#: items: big enough that the lanes stay busy, small enough for steady progress.
ASYNC_CHUNK_ROUNDS = 10


def async_chunksize(concurrency: int) -> int:
    """The chunk size of an async run that did not set one."""
    return concurrency * ASYNC_CHUNK_ROUNDS


def run_async_chunk(spec: ChunkSpec, task: ChunkTask, progress: Optional[Any] = None) -> ChunkResult:
    """Run every item of ``task`` on this thread's loop; never raises for an item's error.

    ``progress`` (a process worker's shared slots): the chunk is marked started, so a
    worker that dies mid-chunk blames its first item (which of the items in flight
    killed it cannot be known) and the rest of the chunk runs again.
    """
    if progress is not None:
        progress[1] = float("inf")  # the loop enforces the timeout, not the parent
        progress[0] = 0
    begin = time.perf_counter()
    values, failures, error, cpu = _aio.run_coroutine(_run(spec, task))
    seconds = time.perf_counter() - begin
    return ChunkResult(task.chunk_id, task.start, values, failures, seconds, error=error,
                       cpu_seconds=cpu)


async def _run(
    spec: ChunkSpec, task: ChunkTask
) -> tuple[List[Any], List[DLQEntry], Optional[BaseException], float]:
    cpu = time.thread_time()  # the loop's own thread (a helper thread when a loop ran here)
    items = task.items
    outcomes: List[Any] = [None] * len(items)
    call = _limited(spec.func, getattr(spec, "rate_limit", None))
    positions = iter(range(len(items)))
    retry, timeout = spec.retry, spec.timeout

    async def lane() -> None:
        for position in positions:  # shared: each lane takes the next position
            outcomes[position] = await _one(call, items[position], retry, timeout)

    watch = asyncio.ensure_future(_aio.watch_loop())
    lanes = [asyncio.ensure_future(lane()) for _ in range(min(spec.concurrency or 1, len(items)))]
    try:
        await asyncio.gather(*lanes)
    except BaseException:
        for running in lanes:
            running.cancel()
        raise
    finally:
        watch.cancel()
    return (*_collect(spec, task, outcomes), time.thread_time() - cpu)


async def _one(call: Callable[[Any], Any], item: Any, retry: Any, timeout: Optional[float]) -> Any:
    """A RetryOutcome, or the timeout in seconds when the item's task was cancelled for it."""
    if timeout is None:
        return await call_with_retry_async(call, item, retry)
    try:
        return await asyncio.wait_for(call_with_retry_async(call, item, retry), timeout)
    except asyncio.TimeoutError:
        return timeout


def _limited(func: Callable[[Any], Any], limit: Any) -> Callable[[Any], Any]:
    if limit is None:
        return func

    async def call(item: Any) -> Any:
        permit = await limit.acquire_async()
        try:
            return await func(item)
        finally:
            permit.release()

    return call


def _collect(
    spec: ChunkSpec, task: ChunkTask, outcomes: List[Any]
) -> tuple[List[Any], List[DLQEntry], Optional[BaseException]]:
    values: List[Any] = []
    failures: List[DLQEntry] = []
    kept: Optional[BaseException] = None
    for position, outcome in enumerate(outcomes):
        if isinstance(outcome, RetryOutcome) and outcome.ok:
            values.append(outcome.value)
            continue
        extra: dict[str, Any] = {"index": task.start + position}
        if isinstance(outcome, RetryOutcome):
            assert outcome.error is not None
            error, attempts, reason = outcome.error, outcome.attempts, "exception"
            if kept is None and spec.keep_error:
                kept = error
        else:
            error = ItemTimeoutError(f"the item ran longer than timeout={outcome}s; its task was cancelled")
            attempts, reason = 1, "timeout"
            extra["timeout_seconds"] = outcome
        entry = failure_entry(
            task.items[position], error, attempts=attempts, function=spec.function_name,
            include_traceback=spec.include_traceback and reason == "exception", reason=reason,
            extra=extra,
        )
        failures.append(entry)
        values.append(failure_of(entry))
    return values, failures, kept
