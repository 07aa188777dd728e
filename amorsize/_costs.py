"""What a parallel run costs: per item (the dry-run sample) and per process (start-up, IPC).

``optimize()`` prices a plan from two kinds of numbers, both gathered here:

::

    run_sample(func, items)        first sample_size items (fewer if slow), run in this process
      ├─ timed with perf_counter    → per-item seconds, coefficient of variation
      ├─ last item under tracemalloc → peak memory per item (kept out of the timing;
      │   items over TRACE_MAX_ITEM_SECONDS use the RSS high-water mark instead)
      └─ pickled sizes              → bytes per item and per result

    get_startup_costs(method)      costs.json in the user cache dir, one entry per
      ├─ hit  → StartupCosts        (host, start method, python version)
      └─ miss or corrupt → measure_startup_costs(method), written back atomically (0600)
           ├─ start and join a trivial process          → process_start_seconds
           └─ an echo child behind a Pipe: small round trips → ipc_round_trip_seconds,
              a few large round trips                   → seconds_per_byte

Start-up costs depend on the machine, not on the workload, so they are measured
once and cached; a corrupt cache warns and is measured again, never an error.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Iterator, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import cloudpickle
import psutil

from amorsize.errors import OptimizerWarning

# --- tuning constants (measurement and cache) ---------------------------------
#: Trivial processes started to time start-up; the fastest is kept, since a busy
#: machine only ever adds noise on top of the true cost.
START_REPEATS = 2
#: Small-payload round trips timed through the echo child (their median is kept).
ROUND_TRIPS = 50
#: What a "small" message looks like: a chunk header and a few small values.
SMALL_PAYLOAD = (0, 1, "item", 2.5)
#: Elements in the large payload used to price bytes; pickles to roughly 200 KB of
#: mixed ints and strings, closer to real items than one flat bytes object.
LARGE_PAYLOAD_ELEMENTS = 20_000
#: Round trips of the large payload (the fastest is kept).
LARGE_REPEATS = 3
#: Seconds any one step of the measurement may take before it is abandoned.
MEASURE_TIMEOUT = 60.0
#: Costs assumed when measuring fails (process start, IPC round trip, per byte):
#: deliberately pessimistic, so a failed measurement never makes parallel look cheap.
FALLBACK_COSTS = {"fork": (0.02, 2e-4, 2e-8), "forkserver": (0.1, 2e-4, 2e-8)}
FALLBACK_COSTS_OTHER = (0.5, 2e-4, 2e-8)  # spawn and anything unknown
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
#: Version of the costs.json layout; a file with another version is re-measured.
CACHE_FORMAT = 1
CACHE_FILE = "costs.json"


# --- start-up and IPC costs ---------------------------------------------------


@dataclass(frozen=True)
class StartupCosts:
    """Fixed costs of running work in processes started with one start method."""

    start_method: str
    process_start_seconds: float  #: start and join one trivial process
    ipc_round_trip_seconds: float  #: one small message to a worker and back
    seconds_per_byte: float  #: pickle, send and unpickle one byte, one way


def _noop() -> None:
    """Target of the start-up timing: do nothing, exit."""


def _echo(conn: Any) -> None:
    """Target of the IPC timing: send every message back until ``None``."""
    while True:
        message = conn.recv()
        if message is None:
            break
        conn.send(message)
    conn.close()


def _timed_round_trip(conn: Any, payload: Any) -> float:
    """Send ``payload`` to the echo child, wait for it to come back; return seconds."""
    start = time.perf_counter()
    conn.send(payload)
    if not conn.poll(MEASURE_TIMEOUT):
        raise TimeoutError("the echo process did not answer")
    conn.recv()
    return time.perf_counter() - start


def _time_process_start(ctx: Any) -> float:
    """Start and join one trivial process; return seconds."""
    proc = ctx.Process(target=_noop, daemon=True)
    start = time.perf_counter()
    proc.start()
    proc.join(MEASURE_TIMEOUT)
    elapsed = time.perf_counter() - start
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError("a trivial process did not exit")
    return elapsed


def measure_startup_costs(start_method: str) -> StartupCosts:
    """Measure the start-up and IPC costs of ``start_method`` on this machine.

    Args:
        start_method: a name from ``multiprocessing.get_all_start_methods()``.

    Returns:
        The measured :class:`StartupCosts`.

    Raises:
        OSError, EOFError, TimeoutError: a process could not be started or did not answer.
    """
    ctx: Any = multiprocessing.get_context(start_method)
    start_seconds = min(_time_process_start(ctx) for _ in range(START_REPEATS))
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,), daemon=True)
    proc.start()
    child.close()
    try:
        _timed_round_trip(parent, SMALL_PAYLOAD)  # waits for the child to boot
        # The median, not the mean: another busy process only ever adds outliers.
        small = statistics.median(_timed_round_trip(parent, SMALL_PAYLOAD)
                                  for _ in range(ROUND_TRIPS))
        large = [(i, str(i)) for i in range(LARGE_PAYLOAD_ELEMENTS)]
        n_bytes = len(pickle.dumps(large, pickle.HIGHEST_PROTOCOL))
        big = min(_timed_round_trip(parent, large) for _ in range(LARGE_REPEATS))
        parent.send(None)
    finally:
        parent.close()
        proc.join(MEASURE_TIMEOUT)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    # A round trip moves the payload both ways; the model prices one way.
    per_byte = max(big - small, 0.0) / (2 * n_bytes)
    return StartupCosts(start_method, start_seconds, small, per_byte)


def cache_path() -> Path:
    """Return the costs cache file: ``$AMORSIZE_CACHE_DIR``, else the XDG cache dir."""
    directory = os.environ.get("AMORSIZE_CACHE_DIR")
    if not directory:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        directory = str(base / "amorsize")
    return Path(directory) / CACHE_FILE


def cache_key(start_method: str) -> str:
    """Key of one cache entry; the host is included because home dirs get shared."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"{platform.node()}/{start_method}/py{version}"


def _entry_to_costs(entry: Any, start_method: str) -> StartupCosts:
    """Rebuild :class:`StartupCosts` from a cache entry; ``ValueError`` if it is bad."""
    if not isinstance(entry, dict) or entry.get("start_method") != start_method:
        raise ValueError("entry is not a costs record for this start method")
    numbers: list[Any] = [entry.get(k) for k in ("process_start_seconds", "ipc_round_trip_seconds",
                                      "seconds_per_byte")]
    for value in numbers:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise ValueError(f"bad cost value {value!r}")
    return StartupCosts(start_method, *(float(v) for v in numbers))


def _read_cache(path: Path) -> tuple[dict[str, Any], bool]:
    """Return (entries, corrupt). A missing file is empty, not corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, False
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"cannot read amorsize cost cache {path}: {exc}; measuring again",
                      OptimizerWarning, stacklevel=3)
        return {}, True
    try:
        document = json.loads(text)
        if document.get("format") != CACHE_FORMAT or not isinstance(document["entries"], dict):
            raise ValueError("unknown layout")
        return document["entries"], False
    except (ValueError, KeyError, AttributeError, TypeError):
        warnings.warn(f"amorsize cost cache {path} is corrupt; measuring again and rewriting it",
                      OptimizerWarning, stacklevel=3)
        return {}, True


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Write the cache atomically (temp file + os.replace), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".costs-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": CACHE_FORMAT, "entries": entries}, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def get_startup_costs(start_method: str, *, refresh: bool = False) -> StartupCosts:
    """Return this machine's costs for ``start_method``, measuring them on a cache miss.

    Args:
        start_method: a name from ``multiprocessing.get_all_start_methods()``.
        refresh: measure again even if the cache holds an entry.

    Returns:
        The cached or freshly measured :class:`StartupCosts`; pessimistic defaults
        (with an :class:`OptimizerWarning`) if measuring fails.
    """
    path, key = cache_path(), cache_key(start_method)
    entries, corrupt = _read_cache(path)
    if key in entries and not refresh:
        try:
            return _entry_to_costs(entries[key], start_method)
        except ValueError:
            warnings.warn(f"amorsize cost cache {path} holds a bad entry for {key!r}; "
                          "measuring again", OptimizerWarning, stacklevel=2)
    try:
        costs = measure_startup_costs(start_method)
    except Exception as exc:  # any failure to measure must degrade, never break optimize()
        warnings.warn(f"could not measure {start_method!r} start-up costs ({exc}); "
                      "assuming pessimistic defaults", OptimizerWarning, stacklevel=2)
        defaults = FALLBACK_COSTS.get(start_method, FALLBACK_COSTS_OTHER)
        return StartupCosts(start_method, *defaults)
    entries = {} if corrupt else dict(entries)
    entries[key] = {**asdict(costs), "measured_at": time.time()}
    try:
        _write_cache(path, entries)
    except OSError as exc:
        warnings.warn(f"cannot write amorsize cost cache {path} ({exc}); set AMORSIZE_CACHE_DIR "
                      "to a writable directory to avoid measuring on every call",
                      OptimizerWarning, stacklevel=2)
    return costs


# --- the machine --------------------------------------------------------------


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """Physical cores this process may use: affinity and cgroup quota respected."""
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


# --- per-item costs: the dry-run sample -----------------------------------------


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
    if isinstance(items, Iterator):
        head = list(itertools.islice(items, sample_size))
        data: Iterable[Any] = itertools.chain(head, items)
        # An iterator that ran dry inside the sample has a known length after all.
        total = None if len(head) == sample_size else len(head)
    else:
        head = list(itertools.islice(iter(items), sample_size))
        data = items
        total = len(items) if isinstance(items, Sized) else None

    results: list[Any] = []
    failures: list[SampleFailure] = []
    times: list[float] = []
    traced_seconds, peak = None, None
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
            if traced and times and min(times) > TRACE_MAX_ITEM_SECONDS:
                result, seconds, peak = _rss_call(func, item)
                times.append(seconds)
            elif traced:
                result, traced_seconds, peak = _traced_call(func, item)
            else:
                start = time.perf_counter()
                result = func(item)
                times.append(time.perf_counter() - start)
        except Exception as exc:
            result = SampleFailure(index, type(exc).__name__, str(exc))
            failures.append(result)
        results.append(result)
        if last:
            break
    head = head[:len(results)]
    if not times and traced_seconds is not None:
        times.append(traced_seconds)

    notes: list[str] = []
    if failures:
        first = failures[0]
        notes.append(
            f"func raised on {len(failures)} of {len(head)} sampled items (first at index "
            f"{first.index}: {first.error_type}: {first.message}); the decision uses the "
            f"{len(head) - len(failures)} that succeeded, and every item is still in "
            "result.data")
    item_sizes = [pickled_size(x) for x in head]
    result_sizes = [pickled_size(r) for r in results if not isinstance(r, SampleFailure)]
    picklable = pickled_size(func) is not None
    if not picklable:
        notes.append("func cannot be pickled (not even by cloudpickle), so it cannot run in "
                     "worker processes")
    if None in item_sizes or None in result_sizes:
        picklable = False
        notes.append("a sampled item or result cannot be pickled, so it cannot cross a "
                     "process boundary")
    mean = statistics.fmean(times) if times else math.nan
    stats = SampleStats(
        per_item_seconds=mean,
        per_item_cv=statistics.pstdev(times) / mean if len(times) > 1 and mean > 0 else 0.0,
        item_pickle_bytes=_mean_int(item_sizes),
        result_pickle_bytes=_mean_int(result_sizes),
        peak_memory_per_item=peak,
        n_sampled=len(head),
        n_failed=len(failures),
        picklable=picklable,
    )
    return Sample(stats, data, total, tuple(results), tuple(failures), tuple(notes))


def _mean_int(sizes: list[int | None]) -> int:
    """Rounded mean of the known sizes; 0 when there are none."""
    known = [s for s in sizes if s is not None]
    return round(statistics.fmean(known)) if known else 0
