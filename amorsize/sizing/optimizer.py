"""optimize(): from a short dry run, decide whether parallelism pays, and how.

Amorsize began as a guard against *negative scaling*: a parallel run slower than
a serial one, because start-up, IPC and pickling eat the gain. ``optimize`` runs
``func`` on a few items in this process, prices both plans, and answers with
``n_jobs``, ``chunksize`` and the speedup it expects::

    items ─► run_sample ─► SampleStats ─┐
                                        ├─► decide() ─► Decision ─► OptimizationResult
    start method ─► get_startup_costs ──┘     (pure: numbers in, plan out)

The cost model, for ``N`` items of ``t`` seconds on ``n`` workers with chunks of ``c``::

    serial   = N·t
    parallel = n·start + ceil(ceil(N/c)/n)·c·t + ceil(N/c)·ipc + N·(item+result bytes)·per_byte

``n`` is the one with the best estimate, capped by cores, ``n_jobs_max``, the item
count and memory; serial wins unless parallel is at least ``MIN_SPEEDUP`` times faster.

:class:`~amorsize.sizing.chunks.ChunkSizer` carries the same idea into a run: the
dispatcher feeds it each chunk's compute time, and it keeps chunks near
``target_chunk_duration``.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from amorsize._validate import check_callable, check_choice, check_int, check_iterable, check_seconds
from amorsize.errors import OptimizerWarning
from amorsize.sizing.cache import get_startup_costs
from amorsize.sizing.chunks import MAX_CHUNKSIZE, MIN_PER_ITEM_SECONDS
from amorsize.sizing.measure import StartupCosts, usable_cores
from amorsize.sizing.result import OptimizationResult, format_bytes, format_seconds
from amorsize.sizing.sample import Sample, SampleStats, run_sample

__all__ = ["Decision", "OptimizationResult", "decide", "optimize"]

# --- tuning constants (the decision; the dry run's live in sample.py) -----------
#: Parallel must be estimated at least this many times faster than serial to be
#: chosen: the model is rough, and a near tie is not worth processes and pickling.
MIN_SPEEDUP = 1.2
#: An extra worker is kept only if it improves the estimate by this factor.
EXTRA_WORKER_MIN_GAIN = 1.01
#: Length assumed for an input of unknown length (a generator). Large on purpose:
#: wrongly going serial on a long stream costs up to n_jobs times the run, wrongly
#: going parallel on a short one costs one start-up.
ASSUMED_UNKNOWN_LENGTH = 10_000
#: With a known length, at least this many chunks per worker, so the tail balances.
MIN_CHUNKS_PER_WORKER = 4
#: Share of the currently available memory the workers may plan to use.
MEMORY_SAFETY_FRACTION = 0.5
#: Chunks a worker may hold at once (the one running and the next one queued).
CHUNKS_IN_FLIGHT_PER_WORKER = 2
#: Memory of an idle worker process (interpreter, modules) on top of its items.
WORKER_BASE_MEMORY = 16 * 2**20
#: Chunksize when nothing could be timed: 1 isolates failures, and ChunkSizer grows it.
FALLBACK_CHUNKSIZE = 1


@dataclass(frozen=True)
class Decision:
    """The plan :func:`decide` computed, with the estimates behind it."""

    n_jobs: int
    chunksize: int
    serial: bool
    estimated_speedup: float  #: of the chosen plan; 1.0 if serial, nan if unknown
    reason: str
    warnings: tuple[str, ...] = ()
    estimated_serial_seconds: float = math.nan
    estimated_parallel_seconds: float = math.nan  #: best parallel plan, even if not chosen


def _chunksize(sample: SampleStats, n_jobs: int, total: int | None, target: float) -> int:
    """Items per chunk: about ``target`` seconds, smaller when timings vary, tail-capped."""
    per_item = max(sample.per_item_seconds, MIN_PER_ITEM_SECONDS)
    # A heterogeneous sample means some chunks will run long; smaller chunks let
    # the other workers absorb the difference.
    size = int(max(1, min(target / per_item / (1.0 + sample.per_item_cv), MAX_CHUNKSIZE)))
    if total is None or total <= 1:
        return size if total is None else 1
    size = max(1, min(size, math.ceil(total / (MIN_CHUNKS_PER_WORKER * n_jobs))))
    # Round the chunk count up to a multiple of n_jobs and even the chunks out,
    # so no worker is left with one extra chunk at the end.
    chunks = math.ceil(math.ceil(total / size) / n_jobs) * n_jobs
    return math.ceil(total / chunks)


def _parallel_seconds(costs: StartupCosts, sample: SampleStats, n_jobs: int, chunksize: int,
                      length: int) -> float:
    """Estimated wall time of the parallel plan (see the module docstring)."""
    per_item = max(sample.per_item_seconds, MIN_PER_ITEM_SECONDS)
    chunks = math.ceil(length / chunksize)
    compute = math.ceil(chunks / n_jobs) * min(chunksize, length) * per_item
    # The parent pickles every item and unpickles every result, one after another.
    transfer = length * (sample.item_pickle_bytes + sample.result_pickle_bytes)
    return (n_jobs * costs.process_start_seconds + compute
            + chunks * costs.ipc_round_trip_seconds + transfer * costs.seconds_per_byte)


def _fits_memory(sample: SampleStats, n_jobs: int, chunksize: int,
                 available: int | None) -> bool:
    """True if ``n_jobs`` workers fit in the safe share of ``available`` memory."""
    if available is None:
        return True
    buffers = CHUNKS_IN_FLIGHT_PER_WORKER * chunksize * (
        sample.item_pickle_bytes + sample.result_pickle_bytes)
    per_worker = WORKER_BASE_MEMORY + (sample.peak_memory_per_item or 0) + buffers
    return n_jobs * per_worker <= available * MEMORY_SAFETY_FRACTION



@dataclass(frozen=True)
class _Problem:
    """The inputs of one :func:`decide` call, shared by its steps."""

    costs: StartupCosts
    sample: SampleStats
    total_items: int | None
    target: float
    length: int  #: total_items, or ASSUMED_UNKNOWN_LENGTH when unknown
    length_note: str

    @property
    def serial_seconds(self) -> float:
        """Estimated wall time of the serial plan."""
        return self.length * max(self.sample.per_item_seconds, MIN_PER_ITEM_SECONDS)

    def chunksize(self, n_jobs: int) -> int:
        """Items per chunk for ``n_jobs`` workers."""
        return _chunksize(self.sample, n_jobs, self.total_items, self.target)

    def best(self, upper: int) -> tuple[int, int, float]:
        """(n_jobs, chunksize, parallel seconds) with the best estimate for n in 2..upper."""
        plan = (0, 0, math.inf)
        for n in range(2, upper + 1):
            size = self.chunksize(n)
            seconds = _parallel_seconds(self.costs, self.sample, n, size, self.length)
            if seconds * EXTRA_WORKER_MIN_GAIN < plan[2]:
                plan = (n, size, seconds)
        return plan

    def serial(self, reason: str, notes: tuple[str, ...] = (), parallel_s: float = math.nan,
               serial_s: float = math.nan) -> Decision:
        """The serial plan, for ``reason``."""
        size = self.chunksize(1) if self.sample.n_ok else 1
        return Decision(1, size, True, 1.0, reason, notes, serial_s, parallel_s)


def decide(costs: StartupCosts, sample: SampleStats, *, total_items: int | None,
           physical_cores: int, available_memory: int | None,
           target_chunk_duration: float = 0.2, n_jobs_max: int | None = None) -> Decision:
    """Choose n_jobs and chunksize from measured numbers; pure, so tests inject them.

    Args:
        costs: start-up and IPC costs of the start method.
        sample: per-item statistics from the dry run.
        total_items: number of items, or None if unknown (``ASSUMED_UNKNOWN_LENGTH``).
        physical_cores: cores usable by the workers.
        available_memory: bytes available, or None to skip the memory check.
        target_chunk_duration: seconds of work a chunk should hold.
        n_jobs_max: upper bound on n_jobs, or None.

    Returns:
        The :class:`Decision`.
    """
    cap = physical_cores if n_jobs_max is None else min(physical_cores, n_jobs_max)
    cap = max(1, cap if total_items is None else min(cap, total_items))
    length = ASSUMED_UNKNOWN_LENGTH if total_items is None else total_items
    length_note = (f"{length} items" if total_items is not None
                   else f"unknown length, assumed {ASSUMED_UNKNOWN_LENGTH} items")
    problem = _Problem(costs, sample, total_items, target_chunk_duration, length, length_note)
    early = _cannot_weigh(problem, cap, n_jobs_max)
    return early if early is not None else _weigh(problem, cap, available_memory)


def _cannot_weigh(problem: _Problem, cap: int, n_jobs_max: int | None) -> Decision | None:
    """The plan when serial and parallel cannot be compared (no items, no timing, one core)."""
    sample, total_items = problem.sample, problem.total_items
    if total_items == 0:
        return problem.serial("there are no items")
    if not sample.picklable:
        return problem.serial("func, an item or a result cannot be pickled, so it must run "
                              "serially")
    if sample.n_ok == 0:
        if cap < 2:
            return problem.serial("nothing could be timed and only one worker is possible")
        return Decision(cap, FALLBACK_CHUNKSIZE, False, math.nan,
                        "every sampled item raised, so nothing could be timed; using a "
                        f"conservative parallel default ({problem.length_note})")
    if cap < 2:
        why = ("only one item" if total_items == 1 else
               "n_jobs_max=1" if n_jobs_max == 1 else "only one usable core")
        return problem.serial(f"{why}: parallelism cannot help",
                              serial_s=problem.serial_seconds)
    return None


def _weigh(problem: _Problem, cap: int, available_memory: int | None) -> Decision:
    """Price the best parallel plan that fits in memory against the serial one."""
    serial_s = problem.serial_seconds
    notes: list[str] = []
    n_jobs, chunksize, parallel_s = problem.best(cap)
    if not _fits_memory(problem.sample, n_jobs, chunksize, available_memory):
        fits = [n for n in range(1, n_jobs)
                if _fits_memory(problem.sample, n, problem.chunksize(n), available_memory)]
        limit = max(fits, default=0)
        notes.append(_memory_note(problem.sample, n_jobs, limit, available_memory))
        if limit < 2:
            return problem.serial("memory allows no more than one worker", tuple(notes),
                                  parallel_s, serial_s)
        n_jobs, chunksize, parallel_s = problem.best(limit)
    speedup = serial_s / parallel_s
    versus = f"{format_seconds(parallel_s)} vs {format_seconds(serial_s)}, {problem.length_note}"
    if speedup < MIN_SPEEDUP:
        return problem.serial(
            f"parallel (n_jobs={n_jobs}) is estimated at only {speedup:.2f}x over serial "
            f"({versus}); below the {MIN_SPEEDUP}x needed to pay for start-up, IPC and "
            "pickling", tuple(notes), parallel_s, serial_s)
    reason = f"parallel is estimated {speedup:.2f}x faster than serial ({versus})"
    return Decision(n_jobs, chunksize, False, speedup, reason, tuple(notes), serial_s, parallel_s)


def _memory_note(sample: SampleStats, wanted: int, limit: int, available: int | None) -> str:
    """The warning that memory cut n_jobs from ``wanted`` to ``limit``."""
    peak = sample.peak_memory_per_item or 0
    return (f"memory: about {format_bytes(peak)} peak per item and "
            f"{format_bytes(WORKER_BASE_MEMORY)} per worker; {format_bytes(available or 0)} "
            f"available fits only {limit} worker(s) (of {wanted} wanted) within the "
            f"{MEMORY_SAFETY_FRACTION:.0%} safety share, so n_jobs was reduced")


def optimize(func: Callable[[Any], Any], items: Iterable[Any], *, sample_size: int = 5,
             target_chunk_duration: float = 0.2, n_jobs_max: int | None = None,
             start_method: str | None = None) -> OptimizationResult:
    """Dry-run ``func`` on a few items and recommend n_jobs and chunksize.

    ``func`` runs in this process on the first ``sample_size`` items or fewer (their results
    are in ``sample_results``). Iterate ``result.data`` afterwards, not ``items``:
    for a generator it holds the sampled items chained back in.

    Args:
        func: the function to map; exceptions it raises while sampling are warnings.
        items: any iterable; an iterator is never consumed beyond the sample.
        sample_size: items to run in the dry run at most (>= 1); slow items stop it
            earlier (``SAMPLE_BUDGET_SECONDS`` in :mod:`amorsize.sizing.sample`).
        target_chunk_duration: seconds of work a chunk should hold (> 0).
        n_jobs_max: upper bound on n_jobs (>= 1), or None for the usable cores.
        start_method: multiprocessing start method to price; None for the default.

    Returns:
        An :class:`OptimizationResult`; every warning in it was also issued as an
        :class:`OptimizerWarning`.

    Raises:
        InvalidArgumentError: an argument is out of range.
        InvalidTypeError: ``func`` is not callable or ``items`` is not iterable.
    """
    target, start_method = _check_arguments(func, items, sample_size, target_chunk_duration,
                                            n_jobs_max, start_method)
    sample = run_sample(func, items, sample_size)
    cores = usable_cores()
    available = psutil.virtual_memory().available
    costs = get_startup_costs(start_method)
    plan = decide(costs, sample.stats, total_items=sample.total_items, physical_cores=cores,
                  available_memory=available, target_chunk_duration=target,
                  n_jobs_max=n_jobs_max)
    notes = sample.warnings + plan.warnings
    for note in notes:
        warnings.warn(note, OptimizerWarning, stacklevel=2)
    return _result(sample, plan, notes, costs, cores, available)


def _check_arguments(func: Any, items: Any, sample_size: Any, target_chunk_duration: Any,
                     n_jobs_max: Any, start_method: Any) -> tuple[float, str]:
    """Validate :func:`optimize`'s arguments; return the target and the start method."""
    check_callable("func", func)
    check_int("sample_size", sample_size, 1)
    target = check_seconds("target_chunk_duration", target_chunk_duration, positive=True)
    check_int("n_jobs_max", n_jobs_max, 1, optional=True)
    methods = multiprocessing.get_all_start_methods()
    if start_method is None:
        # The first listed method is the platform default; this does not fix it.
        start_method = multiprocessing.get_start_method(allow_none=True) or methods[0]
    check_choice("start_method", start_method, methods)
    check_iterable("items", items)
    return target, start_method


def _result(sample: Sample, plan: Decision, notes: tuple[str, ...], costs: StartupCosts,
            cores: int, available: int) -> OptimizationResult:
    """Assemble the :class:`OptimizationResult` from what was measured and decided."""
    stats = sample.stats
    return OptimizationResult(
        n_jobs=plan.n_jobs, chunksize=plan.chunksize,
        estimated_speedup=plan.estimated_speedup, reason=plan.reason, warnings=notes,
        per_item_seconds=stats.per_item_seconds, item_pickle_bytes=stats.item_pickle_bytes,
        result_pickle_bytes=stats.result_pickle_bytes, serial=plan.serial, data=sample.data,
        total_items=sample.total_items, peak_memory_per_item=stats.peak_memory_per_item,
        per_item_cv=stats.per_item_cv, sample_results=sample.results,
        sample_failures=sample.failures, costs=costs, physical_cores=cores,
        available_memory=available, estimated_serial_seconds=plan.estimated_serial_seconds,
        estimated_parallel_seconds=plan.estimated_parallel_seconds)
