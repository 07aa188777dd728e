"""The dispatcher: one loop that feeds a backend's pool and turns its events into results.

Each turn of :meth:`Dispatcher._events` fills the pool's idle slots with chunks
(as the breaker gate allows, and while the reorder buffer is not too far
ahead), then waits for events: :class:`~amorsize.backends.ChunkDone` is
accepted (failures routed, sizer fed), :class:`~amorsize.backends.ChunkLost`
dead-letters the item that was running, keeps the items before it if the backend
still has their values, and queues the rest of its chunk to run again (or
bisects the chunk when the backend cannot tell which item it was).
:meth:`Dispatcher.chunks` puts the results in input order, or passes them on
as they come.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from amorsize.backends import ChunkDone, ChunkLost, ChunkResult, ChunkSpec, ChunkTask, Pool
from amorsize.backends.inherited import lend, withdraw
from amorsize.backends.worker import finish_in_parent
from amorsize.errors import AmorsizeError, InputIteratorError
from amorsize.failure import failure_of, function_name
from amorsize.run.aio import async_fields, plan_async, widen_async
from amorsize.run.budget import Budget
from amorsize.run.chunker import (
    LOOKAHEAD_BYTES_PER_WORKER,
    LOOKAHEAD_ITEMS_PER_WORKER,
    ByteEstimate,
    Chunker,
)
from amorsize.run.failures import FailureRouter, lost_entry
from amorsize.run.gate import REJECT, Gate
from amorsize.run.guard import leave_if_reimporting_main
from amorsize.run.options import RunOptions
from amorsize.run.plan import Machine, Prestart, in_one_chunk, plan_run, read_machine, start_method, widen
from amorsize.run.progress import Progress
from amorsize.run.resume import Resume
from amorsize.tracebacks import source_file

#: While the input has no item ready, how often the loop looks for one (seconds).
INPUT_POLL_SECONDS = 0.01
#: Chunks whose results may wait in the reorder buffer per worker before the
#: dispatcher stops cutting new chunks (bounds memory when one chunk is slow).
#: Items and estimated bytes held are bounded too (``LOOKAHEAD_*`` in run.chunker).
REORDER_CHUNKS_PER_WORKER = 4

Segment = Tuple[int, List[Any]]  # (start position, values)


class Dispatcher:
    """One execute()/imap() call, from the plan to the last result."""

    def __init__(self, func: Callable[[Any], Any], items: Iterable[Any], options: RunOptions,
                 gathered: bool = False) -> None:
        """``gathered``: the caller keeps every result before using any (``execute()``)."""
        leave_if_reimporting_main()  # in a spawned worker re-running an unguarded script
        self.options = options
        self.gathered = gathered
        try:
            total: Optional[int] = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
        self.resume = Resume(options.checkpoint, options.dlq)
        source = self.resume.bind(func, iter(items), total)
        # A list or tuple is sliced into chunks, unless a checkpoint reads it first.
        sliceable = type(items) in (list, tuple) and options.checkpoint is None
        self.chunker = Chunker(source, total, items if sliceable else None)  # type: ignore[arg-type]
        self.chunker.skip.extend(self.resume.skip_ranges())
        fields = async_fields(func, options)
        self.plan = plan_async(self.chunker, options) if fields else plan_run(self.chunker, options)
        if not fields:
            self.plan = in_one_chunk(self.plan, options, total, gathered)
        self.chunker.whole = self.chunker.feeder.lend_whole = self.plan.whole
        #: Segments finished before the pool opens, by a checkpointed run.
        self.finished: List[Segment] = list(self.resume.finished)
        include_traceback = getattr(getattr(options.dlq, "policy", None), "include_traceback", True)
        self.budget = Budget(options.max_failures, self.chunker)
        self.spec = ChunkSpec(func, options.retry, include_traceback, function_name(func),
                              keep_error=options.on_failure == "raise", source_file=source_file(func),
                              rate_limit=options.rate_limit, budget=self.budget.shared,
                              timeout=options.timeout, **fields)
        spec = self.spec
        self.chunker.blocks = (spec.timeout is None and spec.budget is None and spec.retry is None
                               and spec.rate_limit is None and spec.concurrency is None)
        self.failures = FailureRouter(options, self.resume)
        self.gate = Gate(options.circuit_breaker, options.on_open)
        self.progress = Progress(total, options.progress, options.on_progress)
        self.width = 1
        self.reorder: Dict[int, List[Any]] = {}
        self.waiting_finished = 0  # finished segments parked in the reorder buffer
        self.pool: Optional[Pool] = None
        self.prestart = Prestart(self.chunker.total)
        self._machine: Optional[Machine] = None
        self._refills_early = False
        self.waiting_items = 0  # items of the other segments in the reorder buffer
        self.result_bytes = ByteEstimate()  # encoded bytes per result, sampled per chunk

    def chunks(self) -> Iterator[Segment]:
        """Yield ``(start, values)`` per finished run of positions, ordered if asked."""
        ok = False
        try:
            yield from (self._in_order() if self.options.ordered else self._as_completed())
            ok = True
        finally:
            self._finish(ok)

    def _as_completed(self) -> Iterator[Segment]:
        for start, values in self.finished:
            self.progress.advance(len(values), 0, 0)
            yield start, values
        yield from self._events()

    def _in_order(self) -> Iterator[Segment]:
        reorder = self.reorder
        for start, values in self.finished:
            self.progress.advance(len(values), 0, 0)
            reorder[start] = values
        finished_starts = set(reorder)
        self.waiting_finished = len(finished_starts)
        expected = 0
        for start, values in itertools.chain([(-1, [])], self._events()):
            if start >= 0:
                reorder[start] = values
                self.waiting_items += len(values)
            while expected in reorder:
                values = reorder.pop(expected)
                if expected in finished_starts:
                    self.waiting_finished -= 1
                else:
                    self.waiting_items -= len(values)
                yield expected, values
                expected += len(values)
        if reorder:  # cannot happen unless a position was lost: never drop data silently
            raise AssertionError(f"positions never completed before {min(reorder)}")

    # -- the loop ---------------------------------------------------------------------

    def _events(self) -> Iterator[Segment]:
        pool = self._open()
        try:
            while True:
                hold: Optional[float] = None
                while pool.idle_count() and not self.budget.stopped():
                    limit = self.gate.limit()
                    if limit == 0:
                        hold = self.gate.hold_seconds()
                        break
                    task = self._next_task(None if limit == REJECT else limit)
                    if task is None:
                        break
                    if limit == REJECT:
                        yield self._reject(task)
                        continue
                    self.gate.in_flight += len(task.items)
                    pool.submit(task)
                if self.plan.probe and self._machine is None and self.spec.concurrency is None:
                    self._machine = read_machine(self.options)  # while the probe runs
                if self.prestart.due:
                    hold = self.prestart.now_or_hold(pool, self.width, hold)
                self._retire_idle(pool)
                starved = self.chunker.starved
                if not pool.busy_count():
                    if self.budget.stopped():
                        break
                    if starved:
                        self.chunker.feeder.wait(INPUT_POLL_SECONDS)
                        continue
                    if hold is None:
                        break
                    time.sleep(hold)  # circuit open, on_open="wait": nothing else to do
                    continue
                if starved and pool.idle_count():
                    hold = INPUT_POLL_SECONDS if hold is None else min(hold, INPUT_POLL_SECONDS)
                events = pool.wait(hold)
                if events and self._refills_early and not self.plan.probe:
                    self._refill(pool)
                for event in events:
                    self.gate.in_flight -= len(event.task.items)
                    segment = self._handle(event)
                    if segment is not None:
                        yield segment
        except BaseException:
            pool.close(kill=True)
            raise
        finally:
            self.chunker.feeder.close()
        pool.close()
        error = self.chunker.feeder.error
        if error is not None:
            raise InputIteratorError(
                f"the input iterator raised {type(error).__name__}: {error}; every item read "
                "before it was delivered"
            ) from error
        self.budget.check(self.finished)

    def _open(self) -> Pool:
        plan, options = self.plan, self.options
        self._lend_input()  # before the first worker is forked
        is_async = self.spec.concurrency is not None  # its loop enforces the timeout
        pool: Pool = plan.backend.open(
            self.spec, n_jobs=plan.n_jobs, timeout=None if is_async else options.timeout,
            start_method=options.start_method,
        )
        self.width = max(1, getattr(pool, "size", plan.n_jobs or 1))
        self.prestart.due = plan.probe  # once the probe chunk is on its way
        self._refills_early = (self.gathered and getattr(pool, "decodes_lazily", False)
                               and options.circuit_breaker is None and options.max_failures is None)
        self.chunker.start_sizer(plan.chunksize, n_jobs=self.width,
                                 target=options.target_chunk_duration,
                                 adaptive=options.chunksize is None and not (plan.probe or plan.whole
                                                                             or is_async))
        self.pool = pool
        return pool

    def _lend_input(self) -> None:
        """Let forked workers slice the input list themselves (amorsize.backends.inherited).

        Only for ``execute()`` (its caller cannot change the list meanwhile) on a backend
        that forks its workers after this.
        """
        feeder, options = self.chunker.feeder, self.options
        if not (self.gathered and feeder.sequence is not None
                and getattr(self.plan.backend, "inherits_input", False)):
            return
        if start_method(options) == "fork":
            feeder.lent = lend(feeder.sequence)

    def _refill(self, pool: Pool) -> None:
        """Send the workers that just answered their next chunks, before reading the answers.

        A pool that decodes answers lazily (``decodes_lazily``) has only taken their
        bytes: unpickling and routing a large chunk's results takes the parent about a
        millisecond, which the worker would otherwise spend waiting. Only when nothing
        in the answers can change what is sent next (no breaker, no failure budget), and
        for ``execute()``: ``imap`` reads no input before its caller asks for results.
        """
        while pool.idle_count():
            task = self._next_task(None)
            if task is None:
                return
            self.gate.in_flight += len(task.items)
            pool.submit(task)

    def _retire_idle(self, pool: Pool) -> None:
        """Let idle workers leave once every chunk is sent and others still run.

        Their exit (milliseconds for a fork of a large parent) then overlaps the last
        chunks instead of delaying the end. A chunk lost after this still runs: the
        pool replaces the worker it lost.
        """
        chunker = self.chunker
        if chunker.exhausted and not chunker.pending and pool.idle_count() and pool.busy_count():
            retire = getattr(pool, "retire_idle", None)
            if retire is not None:
                retire()

    def _widen(self, task: ChunkTask, result: ChunkResult) -> None:
        """After the probe chunk: choose the width and chunk size, grow the pool to it."""
        if self.spec.concurrency is not None:  # async: one loop unless CPU time dominates
            plan = self.plan = widen_async(result, self.chunker.total, self.options)
        else:
            plan = self.plan = widen(result, task.items, self.chunker.total, self.options,
                                     self._machine)
        self.prestart.due = False  # the decision is here: it grows the pool itself
        pool = self.pool
        assert pool is not None
        grow = getattr(pool, "grow", None)
        added = 0
        if grow is not None and plan.n_jobs is not None and plan.n_jobs > self.width:
            added, self.width = plan.n_jobs - self.width, plan.n_jobs
        self.chunker.start_sizer(plan.chunksize, n_jobs=self.width,
                                 target=self.options.target_chunk_duration,
                                 adaptive=self.spec.concurrency is None)
        if added and self._refills_early:
            self._refill(pool)  # the probe's worker computes while the new ones start
        if added and grow is not None:
            grow(added)
        release = getattr(pool, "release_spares", None)
        if release is not None:
            release()

    def _next_task(self, limit: Optional[int]) -> Optional[ChunkTask]:
        return self.chunker.next_task(limit, read=self._may_read())

    def _may_read(self) -> bool:
        """Whether new input may be read: the look-ahead held is under its bounds.

        Held means in flight plus waiting in the reorder buffer; one more chunk may
        overshoot the bounds by at most its own caps (run.chunker's MAX_CHUNK_*).
        """
        held = self.gate.in_flight + self.waiting_items
        if not held:
            return True
        width = self.width
        if len(self.reorder) - self.waiting_finished >= REORDER_CHUNKS_PER_WORKER * width:
            return False
        if held >= LOOKAHEAD_ITEMS_PER_WORKER * width:
            return False
        per_item = self.chunker.item_bytes.per_item + self.result_bytes.per_item
        return held * per_item < LOOKAHEAD_BYTES_PER_WORKER * width

    def _handle(self, event: Any) -> Optional[Segment]:
        if isinstance(event, ChunkDone):
            return self._accept(event.task, event.result)
        assert isinstance(event, ChunkLost), event
        return self._lost(event)

    # -- outcomes ---------------------------------------------------------------------

    def _accept(self, task: ChunkTask, result: ChunkResult) -> Segment:
        probe = self.plan.probe
        if probe:
            self._widen(task, result)
        values = result.values
        self._check_count(task, values)  # before anything indexes the items by the values
        finish_in_parent(result, task.items)
        if not probe:
            # The probe's few items (first calls included) chose the first chunk size;
            # the sizer learns from real chunks only: five tiny items measured 100x slow.
            self.chunker.observe(len(task.items), result.compute_seconds)
        if values and not result.failures and not self.plan.whole:
            self.result_bytes.observe(values[0])  # one per chunk: bounds the reorder buffer
        self.gate.observe(values)
        if result.failures:
            self.failures.route(result.failures, values, task.start, result.error)
        self._record(task.start, values, len(result.failures))
        return task.start, values  # fewer values than items: the budget stopped the chunk

    def _check_count(self, task: ChunkTask, values: List[Any]) -> None:
        """One value per item, or fewer only when the failure budget stopped the chunk.

        Anything else would shift every later result onto another input's position, or
        lose items without a word: stop the run loudly instead.
        """
        n = len(task.items)
        if len(values) == n or (len(values) < n and self.budget.stopped()):
            return
        name = getattr(self.plan.backend, "name", type(self.plan.backend).__name__)
        raise AmorsizeError(
            f"backend {name!r} returned {len(values)} values for a chunk of {n} items "
            f"(positions {task.start}..{task.start + n - 1}); a chunk's result must hold one "
            "value per item: this is a bug in the backend"
        )

    def _lost(self, event: ChunkLost) -> Optional[Segment]:
        task, position, chunker = event.task, event.position, self.chunker
        if position is None:
            if len(task.items) > 1:  # the backend cannot tell which item: bisect
                half = len(task.items) // 2
                chunker.again(chunker.subtask(task, 0, half), chunker.subtask(task, half, None))
                # Not counted against the crash budget: the death is counted once, when
                # bisection has isolated the item, as with a backend that knows the position.
                return None
            position = 0
        elif event.reason == "worker_crash" and task.report_every > 1:
            # The worker reported blocks: the crash lies in [position, position + every).
            # Run that block again reporting every item, to find the item; count it then.
            end = position + task.report_every
            chunker.again(chunker.subtask(task, 0, position), chunker.subtask(task, position, end, 1),
                          chunker.subtask(task, end, None))
            return None
        entry = lost_entry(task, position, event, self.spec.function_name)
        head: List[Any] = []  # the items before it, when the backend kept their values
        rerun = [chunker.subtask(task, 0, position), chunker.subtask(task, position + 1, None)]
        if event.finished is not None and 0 < position == len(event.finished.values):
            head = self._accept(rerun.pop(0), event.finished)[1]
        chunker.again(*rerun)
        self.gate.failed(entry.error_type)
        start, values = task.start + position, [failure_of(entry)]
        self.failures.route([entry], values, start)
        self._record(start, values, 1)
        if event.reason == "worker_crash":  # not a timeout or an unsendable item: the item's fault
            self.failures.count_crash(self.progress.done)
        return start - len(head), head + values

    def _reject(self, task: ChunkTask) -> Segment:
        """Dead-letter a chunk without calling func: the circuit is open."""
        entries = Gate.rejected(task, self.spec.function_name)
        values: List[Any] = [failure_of(e) for e in entries]
        self.failures.route(entries, values, task.start)
        self._record(task.start, values, len(entries), budgeted=False)
        return task.start, values

    def _record(self, start: int, values: List[Any], n_failed: int, budgeted: bool = True) -> None:
        """A finished segment; ``budgeted``: its failures count against ``max_failures``."""
        self.progress.advance(len(values), n_failed, self.failures.failed)
        self.resume.record(start, values)
        self.budget.record(start, values, n_failed if budgeted else 0)

    def _finish(self, ok: bool) -> None:
        try:
            self.failures.flush()
            self.resume.finish(ok)  # after the flush: see amorsize.run.resume
        finally:
            self.progress.close()
            self.budget.close()
            if self.chunker.feeder.lent is not None:  # whatever stopped the run, even _open()
                withdraw(self.chunker.feeder.lent)
