"""Tests for optimize(), decide(), ChunkSizer and the start-up cost cache.

decide() and ChunkSizer are fed injected numbers, so no test here depends on
machine speed; only the two smoke tests measure real processes, and they assert
nothing about the numbers beyond their sanity.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amorsize import _costs
from amorsize.optimizer import (
    ASSUMED_UNKNOWN_LENGTH,
    MAX_CHUNKSIZE,
    MIN_SPEEDUP,
    Decision,
    SampleStats,
    StartupCosts,
    decide,
)

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

    monkeypatch.setattr(_costs, "measure_startup_costs", fake_measure)
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
