"""The dry run: time ``func`` on the first few items, in this process, and size them.

::

    run_sample(func, items)        first sample_size items (fewer if slow), run in this process
      ├─ timed with perf_counter    → per-item seconds, coefficient of variation
      ├─ last item under tracemalloc → peak memory per item (kept out of the timing;
      │   items over TRACE_MAX_ITEM_SECONDS use the RSS high-water mark instead)
      └─ pickled sizes              → bytes per item and per result

Exceptions ``func`` raises are recorded as :class:`SampleFailure`, never raised, and
every sampled item stays in the data handed back, so the caller loses nothing.
"""

from __future__ import annotations

import itertools
import math
import pickle
import statistics
import sys
import time
import tracemalloc
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, Callable

import cloudpickle
import psutil

# --- tuning constants (the dry run) -------------------------------------------
#: When every untraced sampled item took longer than this, the last one gets
#: its memory peak from the process's resident set size instead of tracemalloc:
#: tracing every allocation slows allocation-heavy Python 10-50x, so tracing one
#: 10 ms item cost the dry run 0.2-0.6 s, more than the rest of the sample. Below
#: this bound a traced item costs at most a few milliseconds.
TRACE_MAX_ITEM_SECONDS = 2e-4
#: The dry run stops early, after at least ``MIN_SAMPLE_ITEMS`` items, when the
#: next item would take it past ``SAMPLE_BUDGET_SECONDS``: five 10 ms items would
#: otherwise hold the parent for 50 ms (5% of a 1 s run) before any worker starts.
SAMPLE_BUDGET_SECONDS = 0.02
MIN_SAMPLE_ITEMS = 2
#: Units of ``ru_maxrss``: bytes on macOS, KiB elsewhere.
RU_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class SampleFailure:
    """A sampled item on which ``func`` raised; sits in its slot of ``sample_results``."""

    index: int
    error_type: str
    message: str


@dataclass(frozen=True)
class SampleStats:
    """What the dry run learned about one item; the input of :func:`decide`."""

    per_item_seconds: float  #: mean over the items that succeeded; nan if none did
    per_item_cv: float  #: coefficient of variation of those timings (0 if fewer than 2)
    item_pickle_bytes: int  #: mean pickled size of a sampled item
    result_pickle_bytes: int  #: mean pickled size of a result
    #: Peak memory of one call, if measured: tracemalloc's peak, or for slow items
    #: the growth of RSS or of its high-water mark (blind to short-lived peaks
    #: below an earlier high-water mark).
    peak_memory_per_item: int | None = None
    n_sampled: int = 0
    n_failed: int = 0
    picklable: bool = True  #: func, items and results can all be sent to a worker

    @property
    def n_ok(self) -> int:
        """Number of sampled items on which ``func`` succeeded."""
        return self.n_sampled - self.n_failed


@dataclass(frozen=True)
class Sample:
    """A finished dry run: statistics, plus everything the caller must get back."""

    stats: SampleStats
    data: Iterable[Any]  #: the input, with sampled items chained back in
    total_items: int | None
    results: tuple[Any, ...]  #: one per sampled item; a SampleFailure where func raised
    failures: tuple[SampleFailure, ...]
    warnings: tuple[str, ...]


def pickled_size(obj: Any) -> int | None:
    """Bytes ``obj`` pickles to (pickle, else cloudpickle); None if neither can."""
    try:
        return len(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
    except Exception:
        try:
            return len(cloudpickle.dumps(obj))
        except Exception:
            return None


def _traced_call(func: Callable[[Any], Any], item: Any) -> tuple[Any, float, int]:
    """Call ``func(item)`` under tracemalloc; return (result, seconds, peak bytes)."""
    was_tracing = tracemalloc.is_tracing()
    if was_tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        result = func(item)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return result, seconds, max(peak, 0)


def _rss_call(func: Callable[[Any], Any], item: Any) -> tuple[Any, float, int]:
    """Call ``func(item)``; return (result, seconds, RSS growth estimate in bytes).

    The estimate is the larger of the growth of the resident set and of its
    high-water mark (``ru_maxrss``), so memory freed before the call returns still
    counts when it pushed the process past its previous peak.
    """
    process = psutil.Process()
    rss = process.memory_info().rss
    high = _max_rss()
    start = time.perf_counter()
    result = func(item)
    seconds = time.perf_counter() - start
    grown = max(process.memory_info().rss - rss, _max_rss() - high, 0)
    return result, seconds, grown


def _max_rss() -> int:
    """This process's resident set high-water mark in bytes (0 where unknown)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_BYTES


def run_sample(func: Callable[[Any], Any], items: Iterable[Any], sample_size: int) -> Sample:
    """Run ``func`` on the first ``sample_size`` items in this process and measure it.

    Sampling stops early, after at least ``MIN_SAMPLE_ITEMS``, once the next item
    would take it past ``SAMPLE_BUDGET_SECONDS``.

    The last sampled item (when there are at least two) runs under tracemalloc for
    the memory peak; its timing is used only if no other item succeeded, since
    tracing slows allocation-heavy code down. When each item before it took over
    ``TRACE_MAX_ITEM_SECONDS``, it runs untraced instead, timed like the
    others, and its peak is estimated from the RSS (:func:`_rss_call`).

    Args:
        func: the function that will be mapped.
        items: any iterable; an iterator gets its sampled items chained back.
        sample_size: how many items to run at most.

    Returns:
        A :class:`Sample`; exceptions from ``func`` are recorded, not raised.

    Raises:
        TypeError: ``items`` is not iterable.
    """
    head, data, total = _take_head(items, sample_size)
    timings = _time_head(func, head)
    head = head[:len(timings.results)]
    notes = _failure_notes(timings.failures, len(head))
    stats = _stats(func, head, timings, notes)
    return Sample(stats, data, total, tuple(timings.results), tuple(timings.failures),
                  tuple(notes))


def _take_head(items: Iterable[Any], sample_size: int) -> tuple[list[Any], Iterable[Any],
                                                                 int | None]:
    """(the first items, the data to iterate afterwards, the length if known)."""
    if isinstance(items, Iterator):
        head = list(itertools.islice(items, sample_size))
        # An iterator that ran dry inside the sample has a known length after all.
        total = None if len(head) == sample_size else len(head)
        return head, itertools.chain(head, items), total
    head = list(itertools.islice(iter(items), sample_size))
    return head, items, len(items) if isinstance(items, Sized) else None


@dataclass
class _Timings:
    """What the sampling loop collected (private to this module, never pickled)."""

    results: list[Any] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    peak: int | None = None


def _time_head(func: Callable[[Any], Any], head: list[Any]) -> _Timings:
    """Call ``func`` on the sampled items in order, stopping early when over budget."""
    out = _Timings()
    traced_seconds = None
    began = time.perf_counter()
    for index, item in enumerate(head):
        spent = time.perf_counter() - began
        # Stop early once the next item would overrun the budget (slow items need
        # fewer samples to be priced, and every one of them runs serially here).
        last = index == len(head) - 1 or (
            index >= max(1, MIN_SAMPLE_ITEMS - 1)
            and spent + spent / index >= SAMPLE_BUDGET_SECONDS)
        traced = last and index >= 1
        try:
            if traced and out.times and min(out.times) > TRACE_MAX_ITEM_SECONDS:
                result, seconds, out.peak = _rss_call(func, item)
                out.times.append(seconds)
            elif traced:
                result, traced_seconds, out.peak = _traced_call(func, item)
            else:
                start = time.perf_counter()
                result = func(item)
                out.times.append(time.perf_counter() - start)
        except Exception as exc:
            result = SampleFailure(index, type(exc).__name__, str(exc))
            out.failures.append(result)
        out.results.append(result)
        if last:
            break
    if not out.times and traced_seconds is not None:
        out.times.append(traced_seconds)
    return out


def _failure_notes(failures: list[SampleFailure], sampled: int) -> list[str]:
    """The warning about sampled items on which ``func`` raised, if any did."""
    if not failures:
        return []
    first = failures[0]
    return [
        f"func raised on {len(failures)} of {sampled} sampled items (first at index "
        f"{first.index}: {first.error_type}: {first.message}); the decision uses the "
        f"{sampled - len(failures)} that succeeded, and every item is still in "
        "result.data"]


def _stats(func: Callable[[Any], Any], head: list[Any], timings: _Timings,
           notes: list[str]) -> SampleStats:
    """Summarise the timings and pickled sizes; append pickling problems to ``notes``."""
    item_sizes = [pickled_size(x) for x in head]
    result_sizes = [pickled_size(r) for r in timings.results if not isinstance(r, SampleFailure)]
    picklable = pickled_size(func) is not None
    if not picklable:
        notes.append("func cannot be pickled (not even by cloudpickle), so it cannot run in "
                     "worker processes")
    if None in item_sizes or None in result_sizes:
        picklable = False
        notes.append("a sampled item or result cannot be pickled, so it cannot cross a "
                     "process boundary")
    times = timings.times
    mean = statistics.fmean(times) if times else math.nan
    return SampleStats(
        per_item_seconds=mean,
        per_item_cv=statistics.pstdev(times) / mean if len(times) > 1 and mean > 0 else 0.0,
        item_pickle_bytes=_mean_int(item_sizes),
        result_pickle_bytes=_mean_int(result_sizes),
        peak_memory_per_item=timings.peak,
        n_sampled=len(head),
        n_failed=len(timings.failures),
        picklable=picklable,
    )


def _mean_int(sizes: list[int | None]) -> int:
    """Rounded mean of the known sizes; 0 when there are none."""
    known = [s for s in sizes if s is not None]
    return round(statistics.fmean(known)) if known else 0
