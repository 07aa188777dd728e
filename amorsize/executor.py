"""execute() and imap(): a parallel map that keeps every item, whatever goes wrong.

Data flow::

 parent process                                   | worker processes
                                                  |
 items ──► chunker ──► in-flight table ──submit──►| run_chunk(task):
 (lazy iterator;       (one chunk per worker:     |   for each item:
  bounded look-ahead)   items, position, start)   |     retry policy around func(item)
                                                  |     ok   → value
 results ◄── reorder ◄── ChunkResult ◄────────────|     fail → DLQEntry (type, message,
   (ordered or                │                   |            traceback text, attempts); the
    completion order)         ▼                   |            exception object never crosses
                        dlq.extend(failures)      |
                        (DeadLetterQueue or       |
                         SharedDeadLetterQueue)   |
 watchdog: a worker died or an item ran past its timeout
   → the item it was running is dead-lettered (reason worker_crash / timeout),
     the rest of its chunk is dispatched again, and the worker is replaced.

**Chunker.** Reads the input lazily. Chunk sizes come from a ChunkSizer that
aims each chunk at ``target_chunk_duration`` of work, from measured in-worker
compute time, and shrinks chunks near the end so the tail balances. New chunks
are only cut when a worker is idle and the reorder buffer is not too far ahead,
so memory stays bounded for endless generators.

**In-flight table.** Lives in the backend (:mod:`amorsize._workers`): one chunk
per worker, so a dead worker's chunk is known exactly.

**Reorder.** Every chunk is a contiguous run of positions (a split chunk too:
it is cut around the poison item), so ordering costs one dict operation per chunk.

**Failures.** Item errors come back as DLQ entries inside the chunk result;
the parent routes them to the DLQ (one batch per chunk), to an ``on_failure``
callable, or raises (``on_failure="raise"``) after a clean shutdown.
"""

from __future__ import annotations

import collections
import itertools
import time
import warnings
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from amorsize._chunk import ChunkResult, ChunkSpec, ChunkTask, finish_in_parent, run_chunk
from amorsize._validate import check_choice, invalid_value
from amorsize._workers import ChunkDone, ChunkLost
from amorsize.backends import LocalBackend, resolve_backend
from amorsize.breaker import CircuitBreaker, CircuitState
from amorsize.checkpoint import Checkpoint
from amorsize.dlq.entry import DLQEntry
from amorsize.errors import (
    CircuitOpenError,
    CrashLoopError,
    InvalidTypeError,
    ItemTimeoutError,
    OptimizerWarning,
    TaskFailedError,
    WorkerCrashedError,
)
from amorsize.failure import Failure, failure_of, function_name, hostname
from amorsize.sizing.chunks import ChunkSizer
from amorsize.sizing.measure import usable_cores
from amorsize.sizing.optimizer import OptimizationResult, optimize
from amorsize.sizing.sample import SampleFailure

#: Chunks whose results may wait in the reorder buffer per worker before the
#: dispatcher stops cutting new chunks (bounds memory when one chunk is slow).
REORDER_CHUNKS_PER_WORKER = 4
#: Crash-loop guard default: stop after this many worker crashes, plus
#: ``CRASH_BUDGET_FRACTION`` of the items finished so far.
CRASH_BUDGET_BASE = 10
CRASH_BUDGET_FRACTION = 0.01
#: Target seconds of work per chunk for adaptive chunking.
TARGET_CHUNK_SECONDS = 0.2
ON_FAILURE_MODES = ("dlq", "raise")
ON_OPEN_MODES = ("dead_letter", "wait")
_REJECT = -1  # gate verdict: the circuit is open, dead-letter instead of calling


def execute(func: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> List[Any]:
    """Run ``func`` over ``items`` in worker processes; return results aligned with ``items``.

    A failed item's position holds a falsy :class:`~amorsize.Failure`; the item and its
    error are in the DLQ. Accepts the same options as :func:`imap` (``ordered`` is
    always True here).
    """
    options["ordered"] = True
    out: List[Any] = []
    for _start, values in _Run(func, items, **options).chunks():
        out.extend(values)
    return out


def imap(func: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Iterator[Any]:
    """Lazily yield ``func(item)`` for each item, in input order or (``ordered=False``)
    as chunks complete.

    Args:
        func: a callable of one argument; lambdas and closures work (cloudpickle).
        items: any iterable, read lazily with bounded look-ahead.
        n_jobs: worker processes. With ``n_jobs`` and ``chunksize`` both None (and no
            timeout) a dry run of the first few items in this process chooses them,
            and may choose to run serially; their results are kept. ``n_jobs=1``
            without a timeout runs in this process.
        chunksize: items per chunk; None adapts it while running from measured times.
        dry_run: set False to skip the optimizer's in-process dry run (every call of
            ``func`` then happens in a worker process).
        retry: a :class:`~amorsize.RetryPolicy` applied to each item in the worker.
        dlq: a DeadLetterQueue or SharedDeadLetterQueue receiving failed items.
        timeout: seconds an item may run before its worker is killed.
        on_failure: ``"dlq"`` (default with a dlq), ``"raise"`` (default without),
            or a callable receiving each failure's DLQEntry.
        ordered: yield in input order (True) or completion order (False).
        progress: show a tqdm progress bar (needs the ``progress`` extra).
        on_progress: callable ``(done, total)`` called after each chunk.
        start_method: multiprocessing start method for the workers.
        max_crashes: crash-loop guard; None means 10 + 1% of the items done so far.
        circuit_breaker: a :class:`~amorsize.CircuitBreaker` whose state the dispatcher
            decides from every worker's failures; while CLOSED at most as many items are
            in flight as failures it takes to open it.
        on_open: while the circuit is open, ``"dead_letter"`` items without calling
            ``func`` (reason ``circuit_open``) or ``"wait"`` until it half-opens.
        checkpoint: a :class:`~amorsize.Checkpoint`; a killed run resumes from it.
        backend: None (local processes), a name registered under the entry-point group
            ``amorsize.backends`` (``"dask"`` with the amorsize-dask plugin), or a backend
            object such as ``DaskBackend(address=...)``.

    Raises:
        TaskFailedError: an item failed and ``on_failure="raise"``.
        CrashLoopError: workers crashed more often than ``max_crashes`` (the DLQ is
            flushed first).
    """
    run = _Run(func, items, **options)  # validate now, like map(), not at the first next()
    return _values(run.chunks())


def _values(chunks: Iterator[Tuple[int, List[Any]]]) -> Iterator[Any]:
    try:
        for _start, values in chunks:
            yield from values
    finally:
        chunks.close()  # type: ignore[attr-defined]  # imap closed early: stop the workers now


class _Run:
    """One execute()/imap() call: validation, dispatch loop and failure routing."""

    def __init__(
        self,
        func: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        n_jobs: Optional[int] = None,
        chunksize: Optional[int] = None,
        retry: Any = None,
        dlq: Any = None,
        timeout: Optional[float] = None,
        on_failure: Any = None,
        ordered: bool = True,
        progress: bool = False,
        on_progress: Optional[Callable[[int, Optional[int]], Any]] = None,
        start_method: Optional[str] = None,
        max_crashes: Optional[int] = None,
        target_chunk_duration: float = TARGET_CHUNK_SECONDS,
        backend: Any = None,
        dry_run: bool = True,
        circuit_breaker: Optional[CircuitBreaker] = None,
        on_open: str = "dead_letter",
        checkpoint: Optional[Checkpoint] = None,
    ) -> None:
        if not callable(func):
            raise InvalidTypeError(f"func={func!r} is not valid; expected a callable")
        try:
            self.total: Optional[int] = len(items)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self.source = iter(items)
        self.items = items if self.total is not None else None  # sized: the optimizer sees len
        self.func = func
        _check_optional_int("n_jobs", n_jobs, 1)
        _check_optional_int("chunksize", chunksize, 1)
        _check_optional_int("max_crashes", max_crashes, 0)
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0
        ):
            raise invalid_value("timeout", timeout, "None or a number of seconds > 0")
        if retry is not None and not callable(getattr(retry, "run", None)):
            raise InvalidTypeError(f"retry={retry!r} is not valid; expected a RetryPolicy or None")
        if dlq is not None and not callable(getattr(dlq, "extend", None)):
            raise InvalidTypeError(
                f"dlq={dlq!r} is not valid; expected a DeadLetterQueue, SharedDeadLetterQueue or None"
            )
        if on_failure is None:
            on_failure = "dlq" if dlq is not None else "raise"
        if not callable(on_failure):
            if on_failure not in ON_FAILURE_MODES:
                raise invalid_value("on_failure", on_failure, "'dlq', 'raise' or a callable(entry)")
            if on_failure == "dlq" and dlq is None:
                raise invalid_value("on_failure", on_failure, "'raise' or a callable when dlq is None")
        if on_progress is not None and not callable(on_progress):
            raise invalid_value("on_progress", on_progress, "None or a callable(done, total)")
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise InvalidTypeError(
                f"circuit_breaker={circuit_breaker!r} is not valid; expected a CircuitBreaker or None"
            )
        check_choice("on_open", on_open, ON_OPEN_MODES)
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise InvalidTypeError(f"checkpoint={checkpoint!r} is not valid; expected a Checkpoint")
        self.breaker, self.on_open, self.checkpoint = circuit_breaker, on_open, checkpoint
        self.inflight_items = 0
        self.retry, self.dlq, self.timeout = retry, dlq, timeout
        self.backend = resolve_backend(backend)
        self.on_failure = on_failure
        self.ordered = ordered
        self.on_progress = on_progress
        self.start_method = start_method
        self.max_crashes = max_crashes
        self.progress_bar = _progress_bar(self.total) if progress else None
        include_traceback = getattr(getattr(dlq, "policy", None), "include_traceback", True)
        self.spec = ChunkSpec(func, retry, include_traceback, function_name(func))
        self.pending: Deque[ChunkTask] = collections.deque()
        self.precomputed: List[Tuple[int, List[Any]]] = []
        self.chunk_ids = itertools.count()
        self.next_start = 0
        self.dry_run = dry_run and checkpoint is None
        self.optimization: Optional[OptimizationResult] = None
        self.skip: Deque[Tuple[int, int]] = collections.deque()
        self.known_failures: Dict[int, DLQEntry] = {}
        if checkpoint is not None:
            self._resume(checkpoint)
        self.n_jobs, initial = self._plan(n_jobs, chunksize, target_chunk_duration)
        self._initial_chunksize = initial
        self._target_chunk_duration = target_chunk_duration
        self._adaptive = chunksize is None
        self.reorder: Dict[int, List[Any]] = {}
        self.waiting_precomputed = 0  # precomputed segments parked in the reorder buffer
        self.exhausted = False
        self.done = 0
        self.failed = 0
        self.crashes = 0

    def _plan(
        self, n_jobs: Optional[int], chunksize: Optional[int], target: float
    ) -> Tuple[int, int]:
        """Choose n_jobs and the first chunk size; run the optimizer's dry run if asked."""
        if n_jobs is None and not isinstance(self.backend, LocalBackend):
            return 0, chunksize or 1  # the backend chooses its own width
        if n_jobs is None and chunksize is None and self.timeout is None and self.dry_run:
            return self._plan_from_dry_run(target)
        if n_jobs is None:
            n_jobs = usable_cores()
            if self.total is not None:
                n_jobs = max(1, min(n_jobs, self.total))
        return n_jobs, chunksize or 1

    def _plan_from_dry_run(self, target: float) -> Tuple[int, int]:
        # The sample runs in this process (no timeout can be enforced there, hence
        # skipped when one is set). Its successful results are kept, so no item runs
        # twice; sampled items that raised run again in workers, under the retry policy.
        with warnings.catch_warnings():
            # A sampled item that raises is routine here: it runs again under the retry
            # policy and, if it still fails, lands in the DLQ like any other.
            warnings.simplefilter("ignore", OptimizerWarning)
            sample_from = self.items if self.items is not None else self.source
            plan = optimize(self.func, sample_from, target_chunk_duration=target,
                            start_method=self.start_method)
        self.optimization = plan
        self.source = iter(plan.data)
        sampled = list(itertools.islice(self.source, len(plan.sample_results)))
        for index, (item, value) in enumerate(zip(sampled, plan.sample_results)):
            if isinstance(value, SampleFailure):
                self.pending.append(ChunkTask(next(self.chunk_ids), index, [item]))
            else:
                self.precomputed.append((index, [value]))
        self.next_start = len(sampled)
        return plan.n_jobs, plan.chunksize

    def _resume(self, checkpoint: Checkpoint) -> None:
        self.source = checkpoint.bind(self.func, self.source, self.total)
        for start, values in checkpoint.finished():
            self.precomputed.append((start, values))
            self.skip.append((start, start + len(values)))
        if self.dlq is not None:
            run = checkpoint.fingerprint
            for entry in self.dlq.filter(predicate=lambda e: e.metadata.get("run") == run):
                self.known_failures[entry.metadata.get("index")] = entry

    # -- chunking -------------------------------------------------------------

    def _next_task(self, limit: Optional[int] = None) -> Optional[ChunkTask]:
        if self.pending:
            task = self.pending.popleft()
            if limit is not None and len(task.items) > limit:
                self.pending.appendleft(self._subtask(task, limit, None))
                task = self._subtask(task, 0, limit)
            return task
        backlog = len(self.reorder) - self.waiting_precomputed
        if self.exhausted or backlog >= REORDER_CHUNKS_PER_WORKER * self.n_jobs:
            return None
        while self.skip and self.skip[0][0] <= self.next_start:
            _begin, end = self.skip.popleft()  # finished by a previous run: read past it
            for _ in itertools.islice(self.source, end - self.next_start):
                pass
            self.next_start = end
        remaining = None if self.total is None else self.total - self.next_start
        size = self.sizer.next_size(remaining)
        if self.skip:
            size = min(size, self.skip[0][0] - self.next_start)
        if limit is not None:
            size = min(size, limit)
        chunk = list(itertools.islice(self.source, max(size, 1)))
        if not chunk:
            self.exhausted = True
            return None
        task = ChunkTask(next(self.chunk_ids), self.next_start, chunk)
        self.next_start += len(chunk)
        if len(chunk) < size:
            self.exhausted = True
        return task

    # -- the loop -------------------------------------------------------------

    def chunks(self) -> Iterator[Tuple[int, List[Any]]]:
        """Yield ``(start, values)`` per finished run of positions, ordered if asked."""
        reorder = self.reorder
        expected = 0
        ok = False
        try:
            for start, values in self.precomputed:  # from the dry run or a checkpoint
                self._advance(len(values), 0)
                if self.ordered:
                    reorder[start] = values
                else:
                    yield start, values
            precomputed_starts = set(reorder)
            self.waiting_precomputed = len(precomputed_starts)
            for start, values in itertools.chain([(-1, [])], self._completed()):
                if not self.ordered:
                    if start >= 0:
                        yield start, values
                    continue
                if start >= 0:
                    reorder[start] = values
                while expected in reorder:
                    values = reorder.pop(expected)
                    if expected in precomputed_starts:
                        self.waiting_precomputed -= 1
                    yield expected, values
                    expected += len(values)
            if reorder:  # cannot happen unless a position was lost: never drop data silently
                raise AssertionError(f"positions never completed before {min(reorder)}")
            ok = True
        finally:
            self._finish(ok)

    def _start_sizer(self, n_jobs: int) -> None:
        self.n_jobs = max(1, n_jobs)
        self.sizer = ChunkSizer(
            self._initial_chunksize, n_jobs=self.n_jobs, total_items=self.total,
            target_chunk_duration=self._target_chunk_duration, adaptive=self._adaptive,
        )

    def _completed(self) -> Iterator[Tuple[int, List[Any]]]:
        if self.n_jobs == 1 and self.timeout is None and isinstance(self.backend, LocalBackend):
            self._start_sizer(1)
            yield from self._run_in_process()
            return
        self.pool = self.backend.open(
            self.spec, n_jobs=self.n_jobs or None, timeout=self.timeout,
            start_method=self.start_method,
        )
        self._start_sizer(getattr(self.pool, "size", self.n_jobs))
        try:
            while True:
                hold = None
                while self.pool.idle_count():
                    limit = self._gate()
                    if limit == _REJECT:
                        task = self._next_task()
                        if task is None:
                            break
                        yield from self._reject(task)
                        continue
                    if limit == 0:
                        hold = self._hold_seconds()
                        break
                    task = self._next_task(limit)
                    if task is None:
                        break
                    self.inflight_items += len(task.items)
                    self.pool.submit(task)
                if not self.pool.busy_count():
                    if hold is None:
                        break
                    time.sleep(hold)  # circuit open, on_open="wait": nothing else to do
                    continue
                for event in self.pool.wait(hold):
                    self.inflight_items -= len(event.task.items)
                    if isinstance(event, ChunkDone):
                        yield from self._accept(event.task, event.result)
                    else:
                        yield from self._lost(event)
        except BaseException:
            self.pool.close(kill=True)
            raise
        self.pool.close()

    def _run_in_process(self) -> Iterator[Tuple[int, List[Any]]]:
        while True:
            limit = self._gate()
            if limit == 0:
                time.sleep(self._hold_seconds())
                continue
            task = self._next_task(None if limit == _REJECT else limit)
            if task is None:
                return
            if limit == _REJECT:
                yield from self._reject(task)
            else:
                yield from self._accept(task, run_chunk(self.spec, task))

    # -- circuit breaker -------------------------------------------------------

    def _gate(self) -> Optional[int]:
        """How many items the next chunk may hold: None (no limit), 0 (hold) or _REJECT."""
        breaker = self.breaker
        if breaker is None:
            return None
        headroom = breaker.failures_until_open
        if headroom is None:
            return None
        if headroom > 0:  # CLOSED: never more calls in flight than failures it takes to open
            return max(0, headroom - self.inflight_items)
        if breaker.state is CircuitState.HALF_OPEN:
            if self.inflight_items == 0 and breaker.allow():
                return 1  # one trial call at a time
            return 0
        return _REJECT if self.on_open == "dead_letter" else 0

    def _hold_seconds(self) -> float:
        assert self.breaker is not None
        return min(max(self.breaker.time_until_retry(), 0.001), 1.0)

    def _reject(self, task: ChunkTask) -> Iterator[Tuple[int, List[Any]]]:
        """Dead-letter a chunk without calling func: the circuit is open."""
        error = CircuitOpenError(
            "not called: the circuit breaker was open; replay this item once the service is back"
        )
        entries = [
            DLQEntry.from_exception(
                item, error, reason="circuit_open", include_traceback=False,
                metadata={"index": task.start + pos, "function": self.spec.function_name},
            )
            for pos, item in enumerate(task.items)
        ]
        values: List[Any] = [failure_of(e) for e in entries]
        self._route(entries, values, task.start, count_in_breaker=False)
        self._advance(len(task.items), len(entries))
        self._record(task.start, values)
        yield task.start, values

    def _record(self, start: int, values: List[Any]) -> None:
        if self.checkpoint is not None:
            self.checkpoint.record(start, values)

    def _accept(self, task: ChunkTask, result: ChunkResult) -> Iterator[Tuple[int, List[Any]]]:
        finish_in_parent(result, task.items)
        self.sizer.observe(len(task.items), result.compute_seconds)
        values = result.values
        if self.breaker is not None:
            for value in values:
                if isinstance(value, Failure):
                    self.breaker.record_failure(value.error_type)
                else:
                    self.breaker.record_success()
        if result.failures:
            self._route(result.failures, values, task.start)
        self._advance(len(task.items), len(result.failures))
        self._record(task.start, values)
        yield task.start, values

    def _lost(self, event: ChunkLost) -> Iterator[Tuple[int, List[Any]]]:
        task, position = event.task, event.position
        if position is None:
            if len(task.items) > 1:  # the backend cannot tell which item: bisect
                half = len(task.items) // 2
                self.pending.extendleft(
                    [self._subtask(task, half, len(task.items)), self._subtask(task, 0, half)]
                )
                # Not counted against the crash budget: the death is counted once, when
                # bisection has isolated the item, as with a backend that knows the position.
                return
            position = 0
        entry = self._lost_entry(task, position, event)
        before, after = self._subtask(task, 0, position), self._subtask(task, position + 1, None)
        for sub in (after, before):
            if sub.items:
                self.pending.appendleft(sub)
        if self.breaker is not None:
            self.breaker.record_failure(entry.error_type)
        values: List[Any] = [failure_of(entry)]
        self._route([entry], values, task.start + position)
        self._advance(1, 1)
        self._record(task.start + position, values)
        if event.reason == "worker_crash":  # a timeout is the item's fault, not a crash loop
            self._count_crash()
        yield task.start + position, values

    def _subtask(self, task: ChunkTask, begin: int, end: Optional[int]) -> ChunkTask:
        return ChunkTask(next(self.chunk_ids), task.start + begin, task.items[begin:end])

    def _lost_entry(self, task: ChunkTask, position: int, event: ChunkLost) -> DLQEntry:
        detail = event.detail
        if event.reason == "timeout":
            error: Exception = ItemTimeoutError(
                f"the item ran longer than timeout={detail.get('timeout_seconds')}s; its worker "
                f"(pid {detail.get('pid')}) was terminated"
            )
        else:
            error = WorkerCrashedError(
                f"{detail.get('cause', 'the worker died')} while running this item "
                f"(pid {detail.get('pid')}, exit code {detail.get('exitcode')})"
            )
        metadata = dict(detail)
        metadata.update(index=task.start + position, function=self.spec.function_name,
                        host=hostname())
        return DLQEntry.from_exception(
            task.items[position], error, metadata=metadata, reason=event.reason,
            include_traceback=False,
        )

    def _count_crash(self) -> None:
        self.crashes += 1
        budget = self.max_crashes
        if budget is None:
            budget = CRASH_BUDGET_BASE + int(CRASH_BUDGET_FRACTION * self.done)
        if self.crashes > budget:
            self._flush_dlq()
            raise CrashLoopError(
                f"{self.crashes} worker crashes exceed the crash budget of {budget} "
                f"(max_crashes={self.max_crashes}); stopping the run. {self.done} items "
                f"finished, {self.failed} of them failed and are in the DLQ; items not yet "
                "run were not started. A function that crashes its process on most items "
                "(native code, memory) is the likely cause."
            )

    # -- failures and progress -------------------------------------------------

    def _route(
        self, entries: List[DLQEntry], values: List[Any], start: int, count_in_breaker: bool = True
    ) -> None:
        """Send failures where the run was asked to; ``values`` holds their Failure stand-ins."""
        self.failed += len(entries)
        if self.on_failure == "raise":
            first = entries[0]
            raise TaskFailedError(
                first.error_type, first.error_message, first.traceback, first.item, first.reason
            )
        if self.checkpoint is not None:
            entries = self._drop_known(entries, values, start)
        if self.dlq is not None and entries:
            self.dlq.extend(entries)
        if callable(self.on_failure):
            for entry in entries:
                self.on_failure(entry)

    def _drop_known(self, entries: List[DLQEntry], values: List[Any], start: int) -> List[DLQEntry]:
        # A resumed run may redo items whose failure the killed run had already
        # dead-lettered (after its last checkpoint save): keep the existing entry.
        assert self.checkpoint is not None
        fresh = []
        for entry in entries:
            index = entry.metadata["index"]
            known = self.known_failures.get(index)
            if known is not None:
                values[index - start] = failure_of(known)
                continue
            entry.metadata["run"] = self.checkpoint.fingerprint
            fresh.append(entry)
        return fresh

    def _advance(self, n_items: int, n_failed: int) -> None:
        self.done += n_items
        if self.progress_bar is not None:
            self.progress_bar.update(n_items)
            if n_failed:
                self.progress_bar.set_postfix(failed=self.failed, refresh=False)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def _flush_dlq(self) -> None:
        flush = getattr(self.dlq, "flush", None)
        if flush is not None:
            flush()

    def _finish(self, ok: bool) -> None:
        try:
            self._flush_dlq()
            if self.checkpoint is not None:
                # Saved only after the DLQ is durable, so the file never claims a failure
                # whose entry could still be lost.
                if ok:
                    self.checkpoint.complete()
                else:
                    self.checkpoint.save()
        finally:
            if self.progress_bar is not None:
                self.progress_bar.close()


def _check_optional_int(name: str, value: Any, minimum: int) -> None:
    if value is not None and (type(value) is not int or value < minimum):
        raise invalid_value(name, value, f"None or an int >= {minimum}")


def _progress_bar(total: Optional[int]) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise invalid_value(
            "progress", True, "False, or install the extra: pip install 'amorsize[progress]'"
        ) from None
    return tqdm(total=total, unit="item", dynamic_ncols=True)


__all__ = ["Failure", "ItemTimeoutError", "WorkerCrashedError", "execute", "imap"]
