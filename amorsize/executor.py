"""execute() and imap(): a parallel map that keeps every item, whatever goes wrong.

Data flow::

 parent process                                          | pool (backend: processes,
                                                         |  in_process, dask, ...)
 items ─► dry run? ─► chunker ─────► breaker gate ─submit►| run_chunk(task):
 (lazy;   (times the  (look-ahead,   (CLOSED: ≤ failures  |   for each item:
 bounded)  first few;  chunk sizes;   to open in flight;  |     retry policy around func(item)
           keeps their checkpoint     OPEN: dead-letter   |     ok   → value
           results)    skip ranges)   or hold)            |     fail → DLQEntry (type, message,
                                                         |       traceback text, attempts), and
 results ◄─ reorder ◄─ ChunkDone(result) ◄─── events ◄────|       the exception object when the
   (ordered or         │    ChunkLost(position, reason)  |       run raises and it pickles
    completion order)  ▼                                  |
                  failures: DLQ (one batch per chunk), on_failure callable, or raise
                  checkpoint: record each finished segment; save after the DLQ flush
 ChunkLost: a worker died or an item ran past its timeout
   → that item is dead-lettered (reason worker_crash / timeout), the rest of its chunk
     runs again (bisected when the pool cannot tell which item), the pool replaces the worker.

**Dry run** (:mod:`amorsize.run.plan`). With ``n_jobs`` and ``chunksize`` left
None, the optimizer times the first few items in this process to choose them
(a width of 1 runs on the in-process backend); those results are kept.

**Chunker** (:mod:`amorsize.run.chunker`). Reads the input lazily. Chunk sizes
come from a ChunkSizer that aims each chunk at ``target_chunk_duration`` of
measured in-worker time and shrinks chunks near the end so the tail balances.
New chunks are only cut when a slot is idle and the reorder buffer is not too
far ahead, so memory stays bounded for endless generators. A resumed run reads
past the ranges its checkpoint already holds.

**Breaker gate** (:mod:`amorsize.run.gate`), **failures**
(:mod:`amorsize.run.failures`), **checkpoint** (:mod:`amorsize.run.resume`),
**the loop** (:mod:`amorsize.run.dispatch`). Backends are in
:mod:`amorsize.backends`: one chunk per slot, so a dead worker's chunk is known
exactly.

**Pacing** (``rate_limit``, :mod:`amorsize.pacing`). Every attempt of ``func`` in
every worker waits for the one limit (retries are calls too), and a Retry-After
pauses it for all. A call still waiting when its item's ``timeout`` passes fails
with RateLimitTimeoutError. The probe chunk runs in a worker, under the limit too.

**Failure budget** (``max_failures``, :mod:`amorsize.run.budget`). Once more items
failed for good than allowed (the breaker's ``circuit_open`` entries do not count),
no item starts in any worker, the DLQ is flushed, the checkpoint saved (a resume runs
exactly the items not started) and FailureBudgetExceededError raised with
``.results`` and ``.not_started``. imap raises it after yielding what finished (in
order: up to the first position not started). See docs/pacing.md.

**Keywords.** An unknown keyword raises UnknownArgumentError (a TypeError) naming
the nearest valid one.

**Reorder.** Every chunk is a contiguous run of positions (a split chunk too),
so ordering costs one dict operation per chunk.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from amorsize.breaker import CircuitBreaker
from amorsize.checkpoint import Checkpoint
from amorsize.errors import InputIteratorError, ItemTimeoutError, WorkerCrashedError
from amorsize.failure import Failure
from amorsize.pacing import RateLimit
from amorsize.retry import RetryPolicy
from amorsize.run.dispatch import Dispatcher
from amorsize.run.options import TARGET_CHUNK_SECONDS, OnFailure, RunOptions, check_func, strict_keywords

ProgressCallback = Callable[[int, Optional[int]], Any]


@strict_keywords
def execute(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    n_jobs: int | None = None,
    chunksize: int | None = None,
    retry: RetryPolicy | None = None,
    dlq: Any = None,
    timeout: float | None = None,
    on_failure: OnFailure = None,
    progress: bool = False,
    on_progress: ProgressCallback | None = None,
    start_method: str | None = None,
    max_crashes: int | None = None,
    target_chunk_duration: float = TARGET_CHUNK_SECONDS,
    backend: Any = None,
    dry_run: bool = True,
    circuit_breaker: CircuitBreaker | None = None,
    on_open: str = "dead_letter",
    checkpoint: Checkpoint | None = None,
    rate_limit: RateLimit | None = None,
    max_failures: int | float | None = None,
    concurrency: int | None = None,
) -> List[Any]:
    """Run ``func`` over ``items`` in worker processes; return results aligned with ``items``.

    A failed item's position holds a falsy :class:`~amorsize.Failure`; the item and its
    error are in the DLQ. The options are those of :func:`imap` (results are always
    in input order here). When ``max_failures`` is spent, the run raises
    :class:`~amorsize.FailureBudgetExceededError` carrying ``.results`` (aligned with
    ``items``, None where not started) and ``.not_started``.
    """
    check_func(func, items)
    dispatcher = Dispatcher(func, items, RunOptions.of(locals()), gathered=True)
    results = _Gathered(dispatcher.chunker.total)
    try:
        for start, values in dispatcher.chunks():
            results.place(start, values)
    except InputIteratorError as error:
        error.results = results.so_far()  # every item read before the input raised, aligned
        raise
    return results.so_far()


class _Gathered:
    """The results list, filled as segments arrive (in order, contiguous).

    With the input's length known, each segment is copied into a list made up front
    while the workers still run, and freed: the parent copies and frees nothing once
    the last one is in (for tiny items that was ~4 ms per 200k after the pool closed).
    A first segment that holds every result (one chunk) is kept as it is, uncopied.
    """

    def __init__(self, total: Optional[int]) -> None:
        self.total = total
        self.values: List[Any] = []
        self.filled = 0

    def place(self, start: int, values: List[Any]) -> None:
        if start != self.filled:  # the dispatcher yields in order: a gap would misalign results
            raise AssertionError(f"results for position {start} came before position {self.filled}")
        if start == 0 and (self.total is None or len(values) >= self.total):
            self.values = values
        else:
            if start == 0:
                self.values = [None] * self.total  # type: ignore[operator]  # total is known here
            # A segment running past the end (a __len__ that undercounts) grows the list.
            self.values[start:start + len(values)] = values
        self.filled = start + len(values)

    def so_far(self) -> List[Any]:
        """The results of positions ``0:filled`` (fewer than the total only on an error)."""
        if len(self.values) > self.filled:
            del self.values[self.filled:]
        return self.values


@strict_keywords
def imap(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    n_jobs: int | None = None,
    chunksize: int | None = None,
    retry: RetryPolicy | None = None,
    dlq: Any = None,
    timeout: float | None = None,
    on_failure: OnFailure = None,
    ordered: bool = True,
    progress: bool = False,
    on_progress: ProgressCallback | None = None,
    start_method: str | None = None,
    max_crashes: int | None = None,
    target_chunk_duration: float = TARGET_CHUNK_SECONDS,
    backend: Any = None,
    dry_run: bool = True,
    circuit_breaker: CircuitBreaker | None = None,
    on_open: str = "dead_letter",
    checkpoint: Checkpoint | None = None,
    rate_limit: RateLimit | None = None,
    max_failures: int | float | None = None,
    concurrency: int | None = None,
) -> Iterator[Any]:
    """Lazily yield ``func(item)`` per item, in input order or (``ordered=False``) as chunks finish.

    Args:
        func: a callable of one argument; lambdas and closures work (cloudpickle).
        items: any iterable, read lazily with bounded look-ahead.
        n_jobs: workers. None with ``chunksize`` None: a probe of the first items, run in
            one worker (results kept), chooses both; nothing runs in this process.
        chunksize: items per chunk; None adapts it while running from measured times.
        retry: a :class:`~amorsize.RetryPolicy` applied to each item in the worker.
        dlq: a DeadLetterQueue or SharedDeadLetterQueue receiving failed items.
        timeout: seconds an item may run before its worker is killed.
        on_failure: ``"dlq"`` (default with a dlq), a callable receiving each DLQEntry, or
            ``"raise"`` (default without): re-raises the item's own exception, its cause the
            worker's traceback text (TaskFailedError if it cannot be rebuilt here).
        ordered: yield in input order (True) or completion order (False).
        progress: a tqdm progress bar (the ``progress`` extra).
        on_progress: callable ``(done, total)`` called after each chunk.
        start_method: multiprocessing start method for the workers.
        max_crashes: crash-loop guard (CrashLoopError); None: 10 + 1% of the items done.
        target_chunk_duration: seconds of work per chunk that adaptive chunking aims at.
        backend: ``"processes"`` (None), ``"threads"``, ``"in_process"``, a name registered
            with :func:`amorsize.backends.register_backend` or an entry point, or an object.
        dry_run: False skips the probe and its sizing.
        circuit_breaker: a :class:`~amorsize.CircuitBreaker` fed by every worker's outcomes;
            while CLOSED, at most as many items are in flight as failures it takes to open.
        on_open: while it is open, ``"dead_letter"`` items without calling ``func``
            (reason ``circuit_open``) or ``"wait"`` until it half-opens.
        checkpoint: a :class:`~amorsize.Checkpoint`; a killed run resumes from it.
        rate_limit: a :class:`~amorsize.RateLimit` shared by every call in every worker.
        max_failures: a failure budget: an int, or a share in (0, 1) of finished items.
        concurrency: ``async def`` func only: items in flight per event loop (default 100).
    An unknown keyword raises UnknownArgumentError (a TypeError) naming the nearest.
    """
    check_func(func, items)
    return _values(Dispatcher(func, items, RunOptions.of(locals())).chunks())  # validated now


def _values(chunks: Iterator[Tuple[int, List[Any]]]) -> Iterator[Any]:
    try:
        for _start, values in chunks:
            yield from values
    finally:
        chunks.close()  # type: ignore[attr-defined]  # imap closed early: stop the workers now


__all__ = ["Failure", "ItemTimeoutError", "WorkerCrashedError", "execute", "imap"]
