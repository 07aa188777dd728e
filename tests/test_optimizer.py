"""Tests for optimize(), decide(), ChunkSizer and the start-up cost cache.

decide() and ChunkSizer are fed injected numbers, so no test here depends on
machine speed; only the two smoke tests measure real processes, and they assert
nothing about the numbers beyond their sanity.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import threading
import tracemalloc
import warnings
from multiprocessing import resource_tracker as resource_tracker_module

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amorsize.errors import InvalidArgumentError, InvalidTypeError, OptimizerWarning
from amorsize.sizing import cache, measure
from amorsize.sizing import sample as dry_run
from amorsize.sizing.chunks import MAX_CHUNKSIZE, MIN_PER_ITEM_SECONDS, MIN_TAIL_CHUNK_SECONDS, ChunkSizer
from amorsize.sizing.measure import StartupCosts
from amorsize.sizing.optimizer import (
    ASSUMED_UNKNOWN_LENGTH,
    MIN_SPEEDUP,
    Decision,
    OptimizationResult,
    decide,
    optimize,
)
from amorsize.sizing.sample import SampleFailure, SampleStats

COSTS = StartupCosts("fork", process_start_seconds=0.01, ipc_round_trip_seconds=1e-4,
                     seconds_per_byte=1e-8)
GiB = 2**30


def stats(per_item: float = 0.01, cv: float = 0.0, item_bytes: int = 50,
          result_bytes: int = 50, peak: int | None = 1000, n: int = 5,
          failed: int = 0, picklable: bool = True) -> SampleStats:
    """A SampleStats with plausible defaults."""
    return SampleStats(per_item, cv, item_bytes, result_bytes, peak, n, failed, picklable)


def plan(sample: SampleStats, total: int | None = 10_000, cores: int = 4,
         memory: int | None = 64 * GiB, **kwargs) -> Decision:
    """decide() with the fixed COSTS and plenty of memory unless told otherwise."""
    return decide(COSTS, sample, total_items=total, physical_cores=cores,
                  available_memory=memory, **kwargs)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own empty cost cache directory."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("AMORSIZE_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def measured(monkeypatch):
    """Replace the real measurement with a counted fake; yields the list of calls."""
    calls: list[str] = []

    def fake_measure(start_method: str) -> StartupCosts:
        calls.append(start_method)
        return StartupCosts(start_method, 0.01, 1e-4, 1e-8)

    monkeypatch.setattr(cache, "measure_startup_costs", fake_measure)
    return calls


def square(x: int) -> int:
    return x * x


# --- decide() with injected numbers ---------------------------------------------


def test_tiny_work_is_serial():
    decision = plan(stats(per_item=1e-6), total=1000)
    assert decision.serial and decision.n_jobs == 1
    assert decision.estimated_speedup == 1.0
    assert f"{MIN_SPEEDUP}x" in decision.reason


def test_ten_ms_items_go_parallel():
    decision = plan(stats(per_item=0.01), total=10_000, cores=4)
    assert not decision.serial
    assert decision.n_jobs == 4
    assert decision.estimated_speedup > 3
    assert decision.chunksize == 20  # 0.2 s target / 10 ms per item


def test_chunks_balance_the_tail():
    decision = plan(stats(per_item=0.001), total=100, cores=4)
    chunks = math.ceil(100 / decision.chunksize)
    assert chunks >= 4 * decision.n_jobs


def test_heterogeneous_samples_get_smaller_chunks():
    steady = plan(stats(per_item=0.001, cv=0.0), total=None)
    ragged = plan(stats(per_item=0.001, cv=2.0), total=None)
    assert ragged.chunksize < steady.chunksize


def test_unknown_length_decides_from_per_item_cost():
    costly = plan(stats(per_item=0.01), total=None)
    assert not costly.serial
    assert f"assumed {ASSUMED_UNKNOWN_LENGTH}" in costly.reason
    assert plan(stats(per_item=1e-7), total=None).serial


def test_memory_limit_reduces_n_jobs_with_a_warning():
    decision = plan(stats(per_item=0.01, peak=GiB), cores=8, memory=5 * GiB)
    assert decision.n_jobs == 2
    assert any("memory" in w for w in decision.warnings)


def test_memory_for_one_worker_only_is_serial():
    decision = plan(stats(per_item=0.01, peak=3 * GiB), cores=8, memory=5 * GiB)
    assert decision.serial
    assert any("memory" in w for w in decision.warnings)


def test_memory_check_is_skipped_when_unknown():
    assert plan(stats(per_item=0.01, peak=100 * GiB), memory=None).n_jobs == 4


@pytest.mark.parametrize("n_jobs_max", [1, 2, 3])
def test_n_jobs_max_is_respected(n_jobs_max):
    decision = plan(stats(per_item=0.01), cores=8, n_jobs_max=n_jobs_max)
    assert decision.n_jobs == n_jobs_max
    assert decision.serial == (n_jobs_max == 1)


@pytest.mark.parametrize(("total", "cores"), [(0, 4), (1, 4), (1000, 1)])
def test_nothing_to_split_is_serial(total, cores):
    assert plan(stats(per_item=1.0), total=total, cores=cores).serial


def test_all_samples_failed_gives_a_conservative_parallel_default():
    decision = plan(stats(per_item=math.nan, n=5, failed=5), cores=4)
    assert not decision.serial and decision.n_jobs == 4 and decision.chunksize == 1
    assert math.isnan(decision.estimated_speedup)


def test_unpicklable_work_is_serial():
    assert plan(stats(per_item=1.0, picklable=False)).serial


@given(
    per_item=st.floats(1e-8, 10.0),
    cv=st.floats(0.0, 3.0),
    item_bytes=st.integers(0, 10**7),
    peak=st.none() | st.integers(0, 2**34),
    total=st.none() | st.integers(0, 10**7),
    cores=st.integers(1, 64),
    memory=st.none() | st.integers(0, 2**40),
    target=st.floats(1e-3, 10.0),
    n_jobs_max=st.none() | st.integers(1, 100),
)
def test_decision_invariants(per_item, cv, item_bytes, peak, total, cores, memory, target,
                             n_jobs_max):
    sample = stats(per_item, cv, item_bytes, item_bytes, peak)
    decision = decide(COSTS, sample, total_items=total, physical_cores=cores,
                      available_memory=memory, target_chunk_duration=target,
                      n_jobs_max=n_jobs_max)
    limit = min(cores, n_jobs_max or cores, cores if total is None else max(total, 1))
    assert 1 <= decision.n_jobs <= limit
    assert decision.serial == (decision.n_jobs == 1)
    assert 1 <= decision.chunksize <= MAX_CHUNKSIZE
    if total:
        assert decision.chunksize <= total
    if not decision.serial:
        assert decision.estimated_speedup >= MIN_SPEEDUP


@given(per_item=st.floats(1e-7, 1.0), factor=st.floats(1.0, 1000.0),
       total=st.none() | st.integers(2, 10**6), cores=st.integers(2, 16))
def test_speedup_grows_with_per_item_cost(per_item, factor, total, cores):
    cheap = plan(stats(per_item), total=total, cores=cores)
    costly = plan(stats(per_item * factor), total=total, cores=cores)

    def best_parallel(d: Decision) -> float:
        return d.estimated_serial_seconds / d.estimated_parallel_seconds

    # Chunk rounding makes it not strictly monotone; it must never drop by much.
    assert best_parallel(costly) >= 0.9 * best_parallel(cheap)
    if not cheap.serial:
        assert not costly.serial


# --- sampling through optimize() ------------------------------------------------


def boom_on_one(x: int) -> int:
    if x == 1:
        raise ValueError("bad item")
    return x * 10


def always_boom(x: int) -> int:
    raise RuntimeError("nope")


def allocate_a_megabyte(x: int) -> int:
    return len(bytearray(2**20)) + x


class Unpicklable:
    """A callable holding a lock: neither pickle nor cloudpickle can ship it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        return x


def test_generator_items_all_come_back_in_order(measured):
    result = optimize(square, (i for i in range(100)))
    assert list(result.data) == list(range(100))
    assert result.total_items is None
    assert list(result.sample_results) == [square(i) for i in range(5)]


def test_list_input_is_returned_as_is(measured):
    items = list(range(50))
    result = optimize(square, items, sample_size=3)
    assert result.data is items
    assert result.total_items == 50
    assert result.sample_results == (0, 1, 4)


def test_func_raising_on_a_sample_keeps_every_item_and_warns(measured):
    with pytest.warns(OptimizerWarning, match="raised on 1 of 5"):
        result = optimize(boom_on_one, iter(range(100)))
    assert list(result.data) == list(range(100))
    assert any("ValueError: bad item" in w for w in result.warnings)
    assert result.sample_failures == (SampleFailure(1, "ValueError", "bad item"),)
    assert isinstance(result.sample_results[1], SampleFailure)
    assert [result.sample_results[i] for i in (0, 2, 3, 4)] == [0, 20, 30, 40]
    assert result.per_item_seconds >= 0


def test_func_raising_on_every_sample_still_decides(measured):
    with pytest.warns(OptimizerWarning, match="raised on 5 of 5"):
        result = optimize(always_boom, range(1000), n_jobs_max=2)
    assert list(result.data) == list(range(1000))
    assert result.n_jobs >= 1 and result.chunksize >= 1
    assert math.isnan(result.per_item_seconds)


def test_issued_warnings_match_result_warnings(measured):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = optimize(boom_on_one, range(10))
    issued = tuple(str(w.message) for w in caught if w.category is OptimizerWarning)
    assert issued == result.warnings and issued


def test_short_and_empty_inputs(measured):
    assert optimize(square, [3, 4]).sample_results == (9, 16)
    empty = optimize(square, iter([]))
    assert empty.serial and list(empty.data) == [] and "no items" in empty.reason
    short = optimize(square, (i for i in range(3)))
    assert short.total_items == 3 and list(short.data) == [0, 1, 2]


def test_peak_memory_is_measured_without_leaving_tracemalloc_on(measured, monkeypatch):
    # The first call of allocate_a_megabyte can take over TRACE_MAX_ITEM_SECONDS
    # (fresh pages); pin the tracemalloc path, whose peak is exact.
    monkeypatch.setattr(dry_run, "TRACE_MAX_ITEM_SECONDS", math.inf)
    result = optimize(allocate_a_megabyte, range(10), sample_size=2)
    assert result.peak_memory_per_item is not None
    assert result.peak_memory_per_item >= 2**20
    assert not tracemalloc.is_tracing()


def test_peak_memory_respects_a_users_own_tracing(measured, monkeypatch):
    monkeypatch.setattr(dry_run, "TRACE_MAX_ITEM_SECONDS", math.inf)
    tracemalloc.start()
    try:
        optimize(allocate_a_megabyte, range(10), sample_size=2)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_slow_items_stop_the_sample_early(measured, monkeypatch):
    # Every sampled item runs serially in the parent: slow ones are priced from fewer.
    monkeypatch.setattr(dry_run, "SAMPLE_BUDGET_SECONDS", 0.0)
    result = optimize(square, (i for i in range(100)), sample_size=5)
    assert result.sample_results == (0, 1)
    assert list(result.data) == list(range(100))
    assert result.total_items is None
    listed = optimize(square, list(range(10)), sample_size=5)
    assert listed.sample_results == (0, 1) and listed.total_items == 10


def test_fast_items_fill_the_sample(measured, monkeypatch):
    monkeypatch.setattr(dry_run, "SAMPLE_BUDGET_SECONDS", math.inf)
    result = optimize(square, iter(range(100)), sample_size=5)
    assert result.sample_results == (0, 1, 4, 9, 16)
    assert list(result.data) == list(range(100))


def test_sample_budget_counts_items_that_raised(measured, monkeypatch):
    monkeypatch.setattr(dry_run, "SAMPLE_BUDGET_SECONDS", 0.0)
    with pytest.warns(OptimizerWarning, match="raised on 1 of 2"):
        result = optimize(boom_on_one, range(10))
    assert isinstance(result.sample_results[1], SampleFailure)
    assert len(result.sample_results) == 2


def test_slow_items_skip_tracemalloc_and_estimate_peak_from_rss(monkeypatch):
    # Tracing slows allocation-heavy code 10-30x: for slow items the traced call
    # would cost the dry run more than the rest of the sample.
    traced: list[object] = []
    monkeypatch.setattr(dry_run, "_traced_call", lambda f, x: traced.append(x))
    monkeypatch.setattr(dry_run, "TRACE_MAX_ITEM_SECONDS", 0.0)
    sample = dry_run.run_sample(allocate_a_megabyte, range(10), 3)
    assert traced == []
    assert not tracemalloc.is_tracing()
    assert sample.stats.peak_memory_per_item is not None
    assert sample.stats.peak_memory_per_item >= 0
    assert len(sample.results) == 3 and sample.stats.per_item_seconds > 0


def test_fast_items_are_traced(monkeypatch):
    monkeypatch.setattr(dry_run, "TRACE_MAX_ITEM_SECONDS", math.inf)
    calls: list[object] = []

    def rss_call(func, item):
        calls.append(item)
        return func(item), 0.0, 0

    monkeypatch.setattr(dry_run, "_rss_call", rss_call)
    sample = dry_run.run_sample(allocate_a_megabyte, range(10), 3)
    assert calls == []
    assert sample.stats.peak_memory_per_item >= 2**20


def test_rss_estimate_sees_a_retained_allocation():
    kept: list[bytearray] = []
    size = 64 * 2**20
    result, seconds, grown = dry_run._rss_call(lambda n: kept.append(bytearray(n)), size)
    assert result is None and seconds >= 0
    assert grown >= size // 2  # bytearray(n) touches its pages; allow allocator slack


def test_unpicklable_func_or_items_run_serially(measured):
    with pytest.warns(OptimizerWarning, match="func cannot be pickled"):
        assert optimize(Unpicklable(), range(100)).serial
    with pytest.warns(OptimizerWarning, match="cannot be pickled"):
        assert optimize(id, [threading.Lock() for _ in range(10)]).serial


def test_n_jobs_max_one_is_serial(measured):
    assert optimize(square, range(100), n_jobs_max=1).n_jobs == 1


def test_explain_names_the_plan(measured):
    result = optimize(square, range(100))
    text = result.explain()
    assert f"n_jobs={result.n_jobs}" in text and f"chunksize={result.chunksize}" in text
    assert result.reason in text and len(text.splitlines()) >= 5


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"sample_size": 0}, "sample_size"),
    ({"sample_size": 2.5}, "sample_size"),
    ({"sample_size": True}, "sample_size"),
    ({"target_chunk_duration": 0}, "target_chunk_duration"),
    ({"target_chunk_duration": -1.0}, "target_chunk_duration"),
    ({"target_chunk_duration": math.nan}, "target_chunk_duration"),
    ({"target_chunk_duration": math.inf}, "target_chunk_duration"),
    ({"target_chunk_duration": "1"}, "target_chunk_duration"),
    ({"n_jobs_max": 0}, "n_jobs_max"),
    ({"n_jobs_max": 2.0}, "n_jobs_max"),
    ({"start_method": "teleport"}, "start_method"),
])
def test_invalid_arguments_are_rejected(measured, kwargs, name):
    with pytest.raises(InvalidArgumentError, match=name):
        optimize(square, range(10), **kwargs)
    assert measured == []


def test_invalid_types_are_rejected():
    with pytest.raises(InvalidTypeError, match="func"):
        optimize(42, range(10))  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="items"):
        optimize(square, 42)  # type: ignore[arg-type]


# --- the start-up cost cache ------------------------------------------------------


def test_costs_are_measured_once_then_reused(measured):
    first = cache.get_startup_costs("fork")
    assert cache.get_startup_costs("fork") == first
    optimize(square, range(10), start_method="fork")
    assert measured == ["fork"]


def test_cache_is_keyed_by_start_method(measured):
    cache.get_startup_costs("fork")
    cache.get_startup_costs("spawn")
    cache.get_startup_costs("spawn", refresh=True)
    assert measured == ["fork", "spawn", "spawn"]


def test_cache_file_is_private_and_written_atomically(measured, cache_dir):
    cache.get_startup_costs("spawn")
    path = cache.cache_path()
    assert path == cache_dir / "costs.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(cache_dir) == ["costs.json"]  # no temp file left behind
    entry = json.loads(path.read_text())["entries"][cache.cache_key("spawn")]
    assert entry["start_method"] == "spawn"


@pytest.mark.parametrize("garbage", [
    b"\x00\xff not json", b"", b"null", b"[1, 2]", b"{}", b'{"format": 1, "entries": []}',
    b'{"format": 99, "entries": {}}',
])
def test_corrupt_cache_warns_is_remeasured_and_rewritten(measured, cache_dir, garbage):
    cache_dir.mkdir()
    (cache_dir / "costs.json").write_bytes(garbage)
    with pytest.warns(OptimizerWarning, match="corrupt"):
        costs = cache.get_startup_costs("fork")
    assert measured == ["fork"]
    document = json.loads((cache_dir / "costs.json").read_text())
    assert document["entries"][cache.cache_key("fork")]["process_start_seconds"] == (
        costs.process_start_seconds)
    cache.get_startup_costs("fork")  # now valid: no warning, no measurement
    assert measured == ["fork"]


def test_bad_cache_entry_is_remeasured(measured, cache_dir):
    cache.get_startup_costs("fork")
    path = cache_dir / "costs.json"
    document = json.loads(path.read_text())
    document["entries"][cache.cache_key("fork")]["seconds_per_byte"] = -1
    path.write_text(json.dumps(document))
    with pytest.warns(OptimizerWarning, match="bad entry"):
        cache.get_startup_costs("fork")
    assert measured == ["fork", "fork"]


def test_cached_costs_are_read_once_until_the_file_changes(measured, cache_dir, monkeypatch):
    cache.get_startup_costs("fork")
    reads: list = []
    original = cache._read_cache
    monkeypatch.setattr(cache, "_read_cache", lambda path: reads.append(path) or original(path))
    first = cache.get_startup_costs("fork")
    assert [cache.get_startup_costs("fork") for _ in range(3)] == [first] * 3
    assert len(reads) == 1  # every probe asks: the file is parsed once, then remembered
    path = cache_dir / "costs.json"
    document = json.loads(path.read_text())
    document["entries"][cache.cache_key("fork")]["process_start_seconds"] = 0.125
    replacement = cache_dir / "new.json"
    replacement.write_text(json.dumps(document))
    os.replace(replacement, path)  # another process measured again
    assert cache.get_startup_costs("fork").process_start_seconds == 0.125
    assert len(reads) == 2 and measured == ["fork"]


@pytest.mark.parametrize("error", [OSError, EOFError, RuntimeError, TimeoutError])
def test_failed_measurement_falls_back_without_caching(monkeypatch, cache_dir, error):
    def broken(start_method: str) -> StartupCosts:
        raise error("no processes for you")

    monkeypatch.setattr(cache, "measure_startup_costs", broken)
    with pytest.warns(OptimizerWarning, match="no processes for you"):
        costs = cache.get_startup_costs("spawn")
    assert costs.process_start_seconds > 0
    assert not (cache_dir / "costs.json").exists()


def test_unwritable_cache_warns_and_still_answers(measured, tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("AMORSIZE_CACHE_DIR", str(not_a_dir))
    with pytest.warns(OptimizerWarning, match="cannot"):
        assert cache.get_startup_costs("fork").start_method == "fork"


def test_cache_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("AMORSIZE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_path() == tmp_path / "xdg" / "amorsize" / "costs.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_path() == tmp_path / "home" / ".cache" / "amorsize" / "costs.json"


def test_usable_cores_respects_affinity_and_quota(monkeypatch):
    measure.physical_cores.cache_clear()  # read once per process: read it under the patch
    monkeypatch.setattr(measure.psutil, "cpu_count", lambda logical=True: 64)
    monkeypatch.setattr(measure.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(measure, "_cgroup_cpu_limit", lambda: None)
    assert measure.usable_cores() == 3
    monkeypatch.setattr(measure, "_cgroup_cpu_limit", lambda: 2)
    assert measure.usable_cores() == 2
    measure.physical_cores.cache_clear()
    monkeypatch.setattr(measure.psutil, "cpu_count", lambda logical=True: None)
    monkeypatch.setattr(measure.os, "cpu_count", lambda: 1)
    assert measure.usable_cores() == 1
    measure.physical_cores.cache_clear()  # the next test reads the real machine


def test_records_pickle():
    sample = stats()
    decision = plan(sample)
    for record in (COSTS, sample, decision, SampleFailure(1, "ValueError", "x")):
        assert pickle.loads(pickle.dumps(record)) == record


# --- real processes: sanity only, never speed ------------------------------------------


@pytest.fixture
def resource_tracker():
    """Start multiprocessing's resource tracker: spawn starts it once, to live on."""
    resource_tracker_module.ensure_running()


def test_measure_startup_costs_for_real(start_method, resource_tracker, no_leaked_children):
    costs = measure.measure_startup_costs(start_method)
    assert costs.start_method == start_method
    assert costs.process_start_seconds > 0
    for value in (costs.ipc_round_trip_seconds, costs.seconds_per_byte):
        assert math.isfinite(value) and value >= 0


def test_optimize_smoke(no_leaked_children, cache_dir):
    result = optimize(abs, range(-500, 500), start_method="fork")
    assert isinstance(result, OptimizationResult)
    assert result.n_jobs >= 1 and result.chunksize >= 1
    assert result.data == range(-500, 500) and result.total_items == 1000
    assert result.costs is not None and result.costs.start_method == "fork"
    assert (cache_dir / "costs.json").exists()
    assert "n_jobs=" in result.explain()


# --- ChunkSizer with injected observations ---------------------------------------------


def converge(sizer: ChunkSizer, per_item: float, steps: int = 60) -> int:
    """Feed ``steps`` chunks of constant per-item cost; return the last size."""
    size = sizer.next_size()
    for _ in range(steps):
        sizer.observe(size, size * per_item)
        size = sizer.next_size()
    return size


@given(per_item=st.floats(1e-7, 1.0), target=st.floats(0.01, 2.0),
       initial=st.integers(1, 10_000))
def test_chunk_sizer_converges_to_target(per_item, target, initial):
    sizer = ChunkSizer(initial, n_jobs=4, target_chunk_duration=target)
    expected = max(1, min(int(target / per_item), MAX_CHUNKSIZE))
    size = converge(sizer, per_item)
    assert abs(size - expected) <= max(1, expected // 100)


def test_chunk_sizer_grows_at_most_twice_per_step():
    sizer = ChunkSizer(1, n_jobs=2)
    sizes = [sizer.next_size()]
    for _ in range(20):
        sizer.observe(sizes[-1], sizes[-1] * 1e-6)
        sizes.append(sizer.next_size())
    assert sizes[:5] == [1, 2, 4, 8, 16]
    assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:]))


def test_chunk_sizer_shrinks_at_once_when_items_get_costlier():
    sizer = ChunkSizer(1, n_jobs=2, target_chunk_duration=0.2)
    assert converge(sizer, 2e-4) == 1000
    sizer.observe(1000, 1000 * 2e-2)  # one chunk 100x slower per item
    assert sizer.next_size() <= 20


def test_chunk_sizer_balances_the_tail():
    sizer = ChunkSizer(1, n_jobs=4, target_chunk_duration=0.2)
    assert converge(sizer, 2e-3) == 100
    assert sizer.next_size(remaining=10_000) == 100
    assert sizer.next_size(remaining=400) == 50  # ceil(400 / (2 * 4))
    assert sizer.next_size(remaining=9) == 2
    assert sizer.next_size(remaining=1) == 1
    assert sizer.next_size(remaining=0) == 0


def test_chunk_sizer_counts_down_total_items():
    sizer = ChunkSizer(10, n_jobs=1, total_items=25, adaptive=False)
    assert [sizer.next_size() for _ in range(4)] == [10, 10, 5, 0]


def test_fixed_chunksize_never_adapts():
    sizer = ChunkSizer(7, n_jobs=2, adaptive=False)
    for seconds in (100.0, 1e-9, 5.0):
        sizer.observe(7, seconds)
        assert sizer.next_size() == 7
    assert sizer.next_size(remaining=3) == 3
    assert sizer.next_size(remaining=1000) == 7  # no tail balancing either


@given(
    initial=st.integers(1, 10**7),
    n_jobs=st.integers(1, 64),
    max_chunksize=st.integers(1, 10**6),
    steps=st.lists(st.tuples(st.none() | st.integers(1, 10**7), st.floats(0.0, 100.0)),
                   max_size=30),
)
def test_chunk_sizer_stays_within_bounds(initial, n_jobs, max_chunksize, steps):
    sizer = ChunkSizer(initial, n_jobs=n_jobs, max_chunksize=max_chunksize)
    for remaining, seconds in steps:
        per_item = sizer.per_item_seconds
        size = sizer.next_size(remaining)
        assert 1 <= size <= max_chunksize
        if remaining is not None:
            assert size <= remaining
            # the tail cap, which never goes below MIN_TAIL_CHUNK_SECONDS of measured work
            floor = 0 if per_item is None else int(
                MIN_TAIL_CHUNK_SECONDS / max(per_item, MIN_PER_ITEM_SECONDS))
            assert size <= max(1, math.ceil(remaining / (2 * n_jobs)), floor)
        sizer.observe(size, seconds)
    assert sizer.per_item_seconds is None or sizer.per_item_seconds >= 0


def test_tail_chunks_keep_a_minimum_of_work():
    sizer = ChunkSizer(1, n_jobs=2, target_chunk_duration=0.2)
    sizer.observe(1000, 0.001)  # 1 us per item
    for _ in range(20):  # grow past the tail sizes (at most 2x per chunk)
        sizer.next_size(None)
    # 40 items remain: balancing alone would cut chunks of 10; 5 ms of work is 5000 items
    assert sizer.next_size(40) == 40
    slow = ChunkSizer(1, n_jobs=2, target_chunk_duration=0.2)
    slow.observe(10, 0.1)  # 10 ms per item: the floor is below one item, balancing rules
    for _ in range(20):
        slow.next_size(None)
    assert slow.next_size(40) == 10


@pytest.mark.parametrize("kwargs", [
    {"initial": 0}, {"initial": 1.5}, {"n_jobs": 0}, {"target_chunk_duration": 0.0},
    {"target_chunk_duration": math.inf}, {"total_items": -1}, {"max_chunksize": 0},
])
def test_chunk_sizer_rejects_bad_arguments(kwargs):
    arguments = {"initial": 1, "n_jobs": 2, **kwargs}
    with pytest.raises(InvalidArgumentError, match=next(iter(kwargs))):
        ChunkSizer(**arguments)


@pytest.mark.parametrize(("n_items", "seconds"), [(0, 1.0), (1, -1.0), (1, math.nan),
                                                  (1, math.inf)])
def test_chunk_sizer_rejects_bad_observations(n_items, seconds):
    with pytest.raises(InvalidArgumentError):
        ChunkSizer(1, n_jobs=1).observe(n_items, seconds)
    with pytest.raises(InvalidArgumentError, match="remaining"):
        ChunkSizer(1, n_jobs=1).next_size(remaining=-1)
