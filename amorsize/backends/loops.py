"""The item loops of :func:`amorsize.backends.worker.run_chunk`: the hottest code of a run.

Three loops, the cheapest that serves the chunk:

- :func:`run_plain`: no progress to report (the in-process backend, threads without
  a timeout). The loop of a guarded list comprehension, ``values.append(func(item))``
  inside ``try``, which CPython runs as fast as one.
- :func:`run_blocks`: a process worker whose items are tiny. Writing the position of
  every item to the shared progress array costs more than the item (~40 ns), so the
  position of each block of ``task.report_every`` items is written instead. A crash
  then names the block; the dispatcher runs that block again with one report per
  item, which names the item (:meth:`amorsize.run.dispatch.Dispatcher._lost`).
- :func:`run_tracked`: one report per item, with its start time under a timeout, the
  failure budget's stop flag before each item, and the retry policy and rate limit
  around each call.

Each keeps ``len(values)`` equal to the position of the next item, so a failure's
position is known without a counter. A StopIteration from ``func`` is an ordinary
exception in these loops (a ``map`` would end quietly at it).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

from amorsize.backends import ChunkResult, ChunkSpec, ChunkTask
from amorsize.dlq.entry import DLQEntry
from amorsize.failure import failure_entry, failure_of
from amorsize.retry import call_with_retry, pause_for_retry_after
from amorsize.run.budget import STOP_BYTE

#: Set by the in-process backend's SIGINT handler: a KeyboardInterrupt seen while it is
#: set came from a real Ctrl-C (the run stops), not from ``func`` raising one itself.
_real_interrupt = False


def note_real_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler while chunks run in the caller: mark the Ctrl-C as real, then raise."""
    global _real_interrupt
    _real_interrupt = True
    raise KeyboardInterrupt


def reraise_real_interrupt(error: BaseException) -> None:
    """Re-raise ``error`` when it is a real Ctrl-C in the caller, not ``func``'s own exception."""
    if _real_interrupt and isinstance(error, KeyboardInterrupt):
        raise error


def clear_real_interrupt() -> None:
    global _real_interrupt
    _real_interrupt = False


class Outcome:
    """What a loop gathers besides the values: the failures and the exception to keep.

    The loop runs ``task.items`` from position ``begin`` (0 but for the in-process
    pool, which resumes a chunk after a failure without copying its rest).
    """

    __slots__ = ("begin", "failures", "kept", "spec", "task")

    def __init__(self, spec: ChunkSpec, task: ChunkTask, begin: int = 0) -> None:
        self.spec, self.task, self.begin = spec, task, begin
        self.failures: List[DLQEntry] = []
        self.kept: Optional[BaseException] = None

    def items(self) -> Iterator[Any]:
        """``task.items`` from ``begin``, in O(1) for a list (its iterator can jump)."""
        iterator = iter(self.task.items)
        if self.begin:
            setstate = getattr(iterator, "__setstate__", None)
            if setstate is None:
                return itertools.islice(iterator, self.begin, None)
            setstate(self.begin)
        return iterator

    def fail(self, values: List[Any], error: BaseException, attempts: int = 1) -> None:
        """The item at position ``begin + len(values)`` failed for good with ``error``."""
        reraise_real_interrupt(error)
        spec, task, position = self.spec, self.task, self.begin + len(values)
        entry = failure_entry(
            task.items[position], error, attempts=attempts, function=spec.function_name,
            include_traceback=spec.include_traceback, extra={"index": task.start + position},
        )
        self.failures.append(entry)
        values.append(failure_of(entry))
        if self.kept is None and spec.keep_error:
            self.kept = error


class Partial:
    """A running chunk's values and :class:`Outcome`, readable from another thread.

    The threads backend keeps one per thread. When an item overruns its timeout, the
    items before it have run (their calls happened, side effects included): their
    values are kept (:meth:`before`) instead of running them again.
    """

    __slots__ = ("outcome", "started", "values")

    def __init__(self) -> None:
        self.values: List[Any] = []
        self.outcome: Optional[Outcome] = None
        self.started = 0.0  # time.monotonic() when the chunk started

    def before(self, task: ChunkTask, position: int, item_started: float) -> Optional[ChunkResult]:
        """``task``'s result for its items before ``position`` (which started at
        ``item_started``, monotonic); None if they are not all done."""
        values = self.values[:position]  # one slice: atomic under the GIL
        out = self.outcome
        if position <= 0 or out is None or out.task is not task or len(values) < position:
            return None
        end = task.start + position
        failures = [entry for entry in out.failures if entry.metadata["index"] < end]
        # kept is failures[0]'s exception (the first failure is the earliest item).
        error = out.kept if failures else None
        seconds = max(0.0, item_started - self.started)
        return ChunkResult(task.chunk_id, task.start, values, failures, seconds, error=error)


def run_plain(out: Outcome, values: List[Any], stop_at_failure: bool) -> None:
    """Every item, reporting nothing (see the module doc)."""
    func = out.spec.func
    for item in out.items():
        try:
            values.append(func(item))
        except BaseException as exc:  # every BaseException from func is the item's failure
            out.fail(values, exc)
            if stop_at_failure:
                return


def run_blocks(out: Outcome, values: List[Any], slots: Any, stop_at_failure: bool) -> None:
    """Every item, writing the position of each block of ``task.report_every`` to ``slots[0]``."""
    func, items, every = out.spec.func, out.task.items, out.task.report_every
    for begin in range(out.begin, len(items), every):
        slots[0] = begin
        for item in items[begin:begin + every]:
            try:
                values.append(func(item))
            except BaseException as exc:
                out.fail(values, exc)
                if stop_at_failure:
                    return


def run_tracked(
    out: Outcome, values: List[Any], slots: Optional[Any], clock: Optional[Callable[[], float]],
    stop_at_failure: bool,
) -> None:
    """One item at a time: progress slots, retry, rate limit, failure budget (module doc).

    With a failure budget the chunk stops before an item once the run must stop:
    ``values`` then holds fewer values than the task has items (the rest never started).
    """
    spec = out.spec
    func, budget, plain = spec.func, spec.budget, spec.retry is None and spec.rate_limit is None
    stop = budget.flag() if budget is not None else None
    told = 0  # successes already reported to the budget
    for position, item in enumerate(out.items(), out.begin):
        if stop is not None and stop[STOP_BYTE]:
            break
        if slots is not None:
            if clock is not None:
                slots[1] = clock()
            slots[0] = position
        if plain:
            try:
                values.append(func(item))
                continue
            except BaseException as exc:
                error, attempts = exc, 1
        else:
            ok, value, attempts = _attempt(spec, item)
            if ok:
                values.append(value)
                continue
            error = value
        out.fail(values, error, attempts)
        del error  # neither holds the error when the loop ends (see _attempt)
        value = None
        if budget is not None:  # as it happens: every worker sees the stop before its next item
            succeeded = len(values) - len(out.failures)
            budget.report(succeeded - told, 1)
            told = succeeded
        if stop_at_failure:
            break
    if budget is not None:
        budget.report(len(values) - len(out.failures) - told, 0)


def _attempt(spec: ChunkSpec, item: Any) -> Tuple[bool, Any, int]:
    """Run one item under the retry policy or rate limit: ``(ok, value or error, attempts)``.

    A BaseException (SystemExit, GeneratorExit...) is the item's failure too, except a
    real Ctrl-C in the caller.
    """
    func, retry, limit = spec.func, spec.retry, spec.rate_limit
    try:
        if retry is not None:
            outcome = call_with_retry(func, item, retry, limit=limit, deadline=_deadline(spec))
            try:
                return outcome.ok, outcome.value if outcome.ok else outcome.error, outcome.attempts
            finally:
                # Not in a local when this frame ends: the error's traceback reaches this
                # frame (f_back of call_with_retry's), a cycle only the collector frees.
                del outcome
        with limit.acquire(_deadline(spec)):
            return True, func(item), 1
    except BaseException as exc:
        reraise_real_interrupt(exc)
        if retry is None:
            pause_for_retry_after(limit, exc)
        return False, exc, 1


def _deadline(spec: ChunkSpec) -> Optional[float]:
    """When a call waiting for the rate limit must give up: its item's timeout."""
    return None if spec.timeout is None else time.monotonic() + spec.timeout
