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

:class:`ChunkSizer` carries the same idea into a run: the dispatcher feeds it each
chunk's compute time, and it keeps chunks near ``target_chunk_duration``.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import psutil

from amorsize._costs import (
    OptimizerWarning,
    SampleFailure,
    SampleStats,
    StartupCosts,
    get_startup_costs,
    run_sample,
    usable_cores,
)
from amorsize._validate import check_choice, check_int, check_seconds, invalid_value
from amorsize.errors import InvalidTypeError

__all__ = [
    "ChunkSizer",
    "Decision",
    "OptimizationResult",
    "OptimizerWarning",
    "SampleFailure",
    "SampleStats",
    "StartupCosts",
    "decide",
    "optimize",
]

# --- tuning constants (the decision; measurement constants live in _costs) -----
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
#: Chunk sizes never exceed this (the ChunkSizer default uses the same bound).
MAX_CHUNKSIZE = 1_000_000
#: Floor on the per-item time, so a too-fast-to-measure func does not divide by zero.
MIN_PER_ITEM_SECONDS = 1e-9
#: Share of the currently available memory the workers may plan to use.
MEMORY_SAFETY_FRACTION = 0.5
#: Chunks a worker may hold at once (the one running and the next one queued).
CHUNKS_IN_FLIGHT_PER_WORKER = 2
#: Memory of an idle worker process (interpreter, modules) on top of its items.
WORKER_BASE_MEMORY = 16 * 2**20
#: Chunksize when nothing could be timed: 1 isolates failures, and ChunkSizer grows it.
FALLBACK_CHUNKSIZE = 1
#: ChunkSizer: growth limit per step, and EWMA weights of a new observation when
#: items got cheaper (slow, so one lucky chunk does not balloon the size) and when
#: they got costlier (fast, so a slow phase shrinks chunks at once).
CHUNK_GROWTH_LIMIT = 2
EWMA_ALPHA_CHEAPER = 0.3
EWMA_ALPHA_COSTLIER = 0.7
#: ChunkSizer tail: a chunk is at most remaining / (this · n_jobs).
TAIL_CHUNKS_PER_WORKER = 2
#: Tail balancing never cuts chunks below this much measured work: smaller ones
#: cost more in round trips than they save in balance (200k tiny items ended in
#: dozens of one-item chunks without it).
MIN_TAIL_CHUNK_SECONDS = 0.005


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

    def serial(reason: str, notes: tuple[str, ...] = (), parallel_s: float = math.nan,
               serial_s: float = math.nan) -> Decision:
        size = _chunksize(sample, 1, total_items, target_chunk_duration) if sample.n_ok else 1
        return Decision(1, size, True, 1.0, reason, notes, serial_s, parallel_s)

    if total_items == 0:
        return serial("there are no items")
    if not sample.picklable:
        return serial("func, an item or a result cannot be pickled, so it must run serially")
    if sample.n_ok == 0:
        if cap < 2:
            return serial("nothing could be timed and only one worker is possible")
        return Decision(cap, FALLBACK_CHUNKSIZE, False, math.nan,
                        "every sampled item raised, so nothing could be timed; using a "
                        f"conservative parallel default ({length_note})")
    serial_s = length * max(sample.per_item_seconds, MIN_PER_ITEM_SECONDS)
    if cap < 2:
        why = ("only one item" if total_items == 1 else
               "n_jobs_max=1" if n_jobs_max == 1 else "only one usable core")
        return serial(f"{why}: parallelism cannot help", serial_s=serial_s)

    def best(upper: int) -> tuple[int, int, float]:
        """(n_jobs, chunksize, parallel seconds) with the best estimate for n in 2..upper."""
        plan = (0, 0, math.inf)
        for n in range(2, upper + 1):
            size = _chunksize(sample, n, total_items, target_chunk_duration)
            seconds = _parallel_seconds(costs, sample, n, size, length)
            if seconds * EXTRA_WORKER_MIN_GAIN < plan[2]:
                plan = (n, size, seconds)
        return plan

    notes: list[str] = []
    n_jobs, chunksize, parallel_s = best(cap)
    if not _fits_memory(sample, n_jobs, chunksize, available_memory):
        fits = [n for n in range(1, n_jobs)
                if _fits_memory(sample, n, _chunksize(sample, n, total_items,
                                                      target_chunk_duration), available_memory)]
        limit = max(fits, default=0)
        peak = sample.peak_memory_per_item or 0
        notes.append(
            f"memory: about {_fmt_bytes(peak)} peak per item and {_fmt_bytes(WORKER_BASE_MEMORY)}"
            f" per worker; {_fmt_bytes(available_memory or 0)} available fits only "
            f"{limit} worker(s) (of {n_jobs} wanted) within the {MEMORY_SAFETY_FRACTION:.0%} "
            "safety share, so n_jobs was reduced")
        if limit < 2:
            return serial("memory allows no more than one worker", tuple(notes),
                          parallel_s, serial_s)
        n_jobs, chunksize, parallel_s = best(limit)
    speedup = serial_s / parallel_s
    if speedup < MIN_SPEEDUP:
        return serial(
            f"parallel (n_jobs={n_jobs}) is estimated at only {speedup:.2f}x over serial "
            f"({_fmt_s(parallel_s)} vs {_fmt_s(serial_s)}, {length_note}); below the "
            f"{MIN_SPEEDUP}x needed to pay for start-up, IPC and pickling",
            tuple(notes), parallel_s, serial_s)
    reason = (f"parallel is estimated {speedup:.2f}x faster than serial "
              f"({_fmt_s(parallel_s)} vs {_fmt_s(serial_s)}, {length_note})")
    return Decision(n_jobs, chunksize, False, speedup, reason, tuple(notes), serial_s, parallel_s)


@dataclass(frozen=True)
class OptimizationResult:
    """What :func:`optimize` recommends, and what it measured on the way."""

    n_jobs: int
    chunksize: int
    estimated_speedup: float  #: 1.0 when serial; nan when nothing could be timed
    reason: str
    warnings: tuple[str, ...]
    per_item_seconds: float
    item_pickle_bytes: int
    result_pickle_bytes: int
    serial: bool
    #: Iterate this instead of the input: for an iterator, the sampled items are
    #: chained back in front of the rest; otherwise it is the input itself.
    data: Iterable[Any] = field(repr=False, compare=False)
    total_items: int | None = None
    peak_memory_per_item: int | None = None
    per_item_cv: float = 0.0
    #: One per sampled item, in order; a SampleFailure where func raised. Lets a
    #: caller skip recomputing the first len(sample_results) items.
    sample_results: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    sample_failures: tuple[SampleFailure, ...] = ()
    costs: StartupCosts | None = None
    physical_cores: int = 1
    available_memory: int | None = None
    estimated_serial_seconds: float = math.nan
    estimated_parallel_seconds: float = math.nan

    def explain(self) -> str:
        """Return a readable, multi-line account of the decision."""
        plan = "serially" if self.serial else "in parallel"
        speedup = ("unknown" if math.isnan(self.estimated_speedup)
                   else f"{self.estimated_speedup:.2f}x")
        memory = ("not measured" if self.peak_memory_per_item is None
                  else _fmt_bytes(self.peak_memory_per_item))
        lines = [
            f"Run {plan}: n_jobs={self.n_jobs}, chunksize={self.chunksize}",
            f"  why: {self.reason}",
            f"  estimated speedup: {speedup}",
            f"  items: {'unknown' if self.total_items is None else self.total_items}; sampled "
            f"{len(self.sample_results)} ({len(self.sample_failures)} raised)",
            f"  per item: {_fmt_s(self.per_item_seconds)} (cv {self.per_item_cv:.2f}), "
            f"peak memory {memory}, pickled {_fmt_bytes(self.item_pickle_bytes)} in / "
            f"{_fmt_bytes(self.result_pickle_bytes)} out",
        ]
        if self.costs is not None:
            c = self.costs
            lines.append(f"  costs ({c.start_method}): process start "
                         f"{_fmt_s(c.process_start_seconds)}, IPC round trip "
                         f"{_fmt_s(c.ipc_round_trip_seconds)}, "
                         f"{c.seconds_per_byte * 1e9:.2f} ns/byte")
        available = "unknown" if self.available_memory is None else _fmt_bytes(
            self.available_memory)
        lines.append(f"  machine: {self.physical_cores} usable core(s), {available} available")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _fmt_s(seconds: float) -> str:
    """Seconds in a readable unit."""
    if math.isnan(seconds):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _fmt_bytes(n: float) -> str:
    """Bytes in a readable binary unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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
            earlier (``SAMPLE_BUDGET_SECONDS`` in :mod:`amorsize._costs`).
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
    if not callable(func):
        raise InvalidTypeError(f"func={func!r} is not valid; expected a callable")
    check_int("sample_size", sample_size, 1)
    target = check_seconds("target_chunk_duration", target_chunk_duration, positive=True)
    if n_jobs_max is not None:
        check_int("n_jobs_max", n_jobs_max, 1)
    methods = multiprocessing.get_all_start_methods()
    if start_method is None:
        # The first listed method is the platform default; this does not fix it.
        start_method = multiprocessing.get_start_method(allow_none=True) or methods[0]
    check_choice("start_method", start_method, methods)
    try:
        iter(items)
    except TypeError:
        raise InvalidTypeError(f"items={items!r} is not valid; expected an iterable") from None

    sample = run_sample(func, items, sample_size)
    stats = sample.stats
    cores = usable_cores()
    available = psutil.virtual_memory().available
    costs = get_startup_costs(start_method)
    plan = decide(costs, stats, total_items=sample.total_items, physical_cores=cores,
                  available_memory=available, target_chunk_duration=target,
                  n_jobs_max=n_jobs_max)
    notes = sample.warnings + plan.warnings
    for note in notes:
        warnings.warn(note, OptimizerWarning, stacklevel=2)
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


class ChunkSizer:
    """Adaptive chunk size for a running map; the dispatcher calls it once per chunk.

    It keeps an exponentially weighted estimate of seconds per item from the
    chunks that finished, and sizes the next chunk to take ``target_chunk_duration``:
    growing at most ``CHUNK_GROWTH_LIMIT`` times per step, shrinking at once, and
    near the end at most ``ceil(remaining / (TAIL_CHUNKS_PER_WORKER * n_jobs))`` so
    the last chunks spread over every worker. Both methods are O(1).
    """

    __slots__ = ("_adaptive", "_dispatched", "_initial", "_max", "_n_jobs", "_per_item",
                 "_size", "_target", "_total")

    def __init__(self, initial: int, *, n_jobs: int, target_chunk_duration: float = 0.2,
                 total_items: int | None = None, adaptive: bool = True,
                 max_chunksize: int = MAX_CHUNKSIZE) -> None:
        """Args:
            initial: size of the first chunks (and of every chunk if not adaptive).
            n_jobs: number of workers, for tail balancing.
            target_chunk_duration: seconds of work a chunk should hold.
            total_items: number of items, so ``remaining`` can be derived when omitted.
            adaptive: False when the user fixed the chunksize.
            max_chunksize: upper bound on any size.

        Raises:
            InvalidArgumentError: an argument is out of range.
        """
        self._max = check_int("max_chunksize", max_chunksize, 1)
        self._initial = min(check_int("initial", initial, 1), self._max)
        self._n_jobs = check_int("n_jobs", n_jobs, 1)
        self._target = check_seconds("target_chunk_duration", target_chunk_duration, positive=True)
        self._total = None if total_items is None else check_int("total_items", total_items, 0)
        self._adaptive = bool(adaptive)
        self._size = self._initial
        self._per_item: float | None = None
        self._dispatched = 0

    @property
    def per_item_seconds(self) -> float | None:
        """The current estimate of seconds per item, or None before any observation."""
        return self._per_item

    def next_size(self, remaining: int | None = None) -> int:
        """Return the size of the next chunk (0 only when nothing remains).

        Args:
            remaining: items not yet dispatched, if known; derived from
                ``total_items`` when omitted.

        Raises:
            InvalidArgumentError: ``remaining`` is negative.
        """
        if remaining is None and self._total is not None:
            remaining = max(self._total - self._dispatched, 0)
        if remaining is not None and remaining < 0:
            raise invalid_value("remaining", remaining, "an int >= 0")
        if not self._adaptive:
            size = self._initial
        else:
            if self._per_item is not None:
                ideal = self._target / max(self._per_item, MIN_PER_ITEM_SECONDS)
                grown = self._size * CHUNK_GROWTH_LIMIT
                self._size = int(max(1, min(ideal, grown, self._max)))
            size = self._size
            if remaining is not None:
                # Ceiling division in ints: exact, and no float allocation.
                tail = -(-remaining // (TAIL_CHUNKS_PER_WORKER * self._n_jobs))
                if self._per_item is not None:
                    floor = int(MIN_TAIL_CHUNK_SECONDS / max(self._per_item, MIN_PER_ITEM_SECONDS))
                    tail = max(tail, floor)
                size = min(size, max(1, tail))
        if remaining is not None:
            size = min(size, remaining)
        self._dispatched += size
        return size

    def observe(self, n_items: int, seconds: float) -> None:
        """Record a finished chunk: its size and its compute time inside the worker.

        Raises:
            InvalidArgumentError: ``n_items`` < 1, or ``seconds`` negative or not finite.
        """
        if n_items < 1:
            raise invalid_value("n_items", n_items, "an int >= 1")
        if not 0.0 <= seconds < math.inf:
            raise invalid_value("seconds", seconds, "a finite number >= 0")
        per_item = seconds / n_items
        if self._per_item is None:
            self._per_item = per_item
        else:
            alpha = EWMA_ALPHA_COSTLIER if per_item > self._per_item else EWMA_ALPHA_CHEAPER
            self._per_item += alpha * (per_item - self._per_item)
