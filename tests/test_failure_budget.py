"""max_failures: a run stops once too many items failed, with every input accounted for."""

from __future__ import annotations

import os
import pickle
from typing import Any

import cloudpickle
import pytest
from _pacing_workers import broken
from hypothesis import given
from hypothesis import strategies as st

from amorsize import (
    Checkpoint,
    CircuitBreaker,
    DeadLetterQueue,
    DLQPolicy,
    FailureBudgetExceededError,
    execute,
    imap,
    is_failure,
)
from amorsize.backends import ChunkSpec
from amorsize.errors import AmorsizeError, InvalidArgumentError
from amorsize.pacing import RateLimit
from amorsize.run.budget import FRACTION_MIN_ITEMS, FailureBudget, exceeded

pytestmark = pytest.mark.timeout(120)

CALLED: list[int] = []


def fails_on_multiples_of(k: int) -> Any:
    def func(x: int) -> int:
        CALLED.append(x)
        if x % k == 0:
            raise ValueError(f"bad item {x}")
        return x * 10

    return func


def sometimes_broken(x: int) -> int:
    """Fails on multiples of 3 while AMORSIZE_TEST_BROKEN is set (in-process runs only)."""
    CALLED.append(x)
    if os.environ.get("AMORSIZE_TEST_BROKEN") and x % 3 == 0:
        raise ValueError(f"bad item {x}")
    return x * 10


def memory_dlq() -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(auto_persist=False))


def check_accounted(n_items: int, results: list[Any], dlq: DeadLetterQueue,
                    not_started: list[range]) -> None:
    """Each input is exactly one of: a result, a DLQ entry, a position not started."""
    assert len(results) == n_items
    waiting = [p for r in not_started for p in r]
    dead = sorted(e.metadata["index"] for e in dlq.get_entries())
    ok = [p for p, v in enumerate(results) if v is not None and not is_failure(v)]
    assert sorted(waiting + dead + ok) == list(range(n_items))
    assert all(results[p] is None for p in waiting)
    assert all(is_failure(results[p]) for p in dead)


# --- the judgement ---------------------------------------------------------------------


def test_exceeded_counts_items_or_a_share_after_enough_items() -> None:
    assert not exceeded(3, 10, 3) and exceeded(3, 10, 4)
    assert exceeded(0, 1, 1)
    assert not exceeded(0.1, FRACTION_MIN_ITEMS - 1, FRACTION_MIN_ITEMS - 1)
    assert not exceeded(0.1, 100, 10) and exceeded(0.1, 100, 11)


@pytest.mark.parametrize("value", [-1, 1.0, 0.0, 1.5, True, "3", float("nan")])
def test_max_failures_is_validated(value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="max_failures"):
        execute(abs, [1], max_failures=value)


def test_the_budget_pickles_to_the_same_shared_state() -> None:
    budget = FailureBudget(1)
    copy = pickle.loads(pickle.dumps(budget))
    assert not budget.stopped()
    copy.report(5, 1)
    assert not budget.stopped()
    copy.report(0, 1)
    assert budget.stopped() and copy.stopped()
    budget.close()
    assert not os.path.exists(budget.path)


def test_a_chunk_spec_with_pacing_and_a_budget_pickles() -> None:
    limit, budget = RateLimit(5), FailureBudget(0)
    spec = ChunkSpec(abs, None, True, "abs", rate_limit=limit, budget=budget, timeout=2.5)
    copy = cloudpickle.loads(cloudpickle.dumps(spec))
    assert copy.timeout == 2.5 and copy.rate_limit.path == limit.path
    copy.budget.report(0, 1)
    assert budget.stopped()
    budget.close()
    limit.close()


def test_the_error_pickles_with_its_counts() -> None:
    error = FailureBudgetExceededError("stopped", failed=4, finished=9, max_failures=3,
                                       results=[1, None], not_started=[range(1, 2)])
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, AmorsizeError)
    assert (copy.failed, copy.finished, copy.max_failures) == (4, 9, 3)
    assert copy.results == [1, None] and copy.not_started == [range(1, 2)] and str(copy) == "stopped"


# --- execute and imap -------------------------------------------------------------------------


def test_in_process_run_stops_after_exactly_one_failure_too_many() -> None:
    CALLED.clear()
    dlq = memory_dlq()
    with pytest.raises(FailureBudgetExceededError) as info:
        execute(fails_on_multiples_of(5), range(200), backend="in_process", chunksize=40,
                max_failures=3, dlq=dlq)
    error = info.value
    assert error.failed == 4 and len(dlq) == 4
    assert max(CALLED) == 15  # items 0, 5, 10, 15 failed; nothing after 15 was called
    assert error.not_started == [range(16, 200)]
    check_accounted(200, error.results, dlq, error.not_started)


def test_a_broken_deployment_costs_about_max_failures_calls(start_method: str,
                                                            no_leaked_children: None) -> None:
    # Counting at chunk boundaries would cost at least a chunk (50) per worker.
    dlq = memory_dlq()
    with pytest.raises(FailureBudgetExceededError) as info:
        execute(broken, range(1000), n_jobs=2, chunksize=50, max_failures=5, dlq=dlq,
                start_method=start_method)
    error = info.value
    assert 6 <= len(dlq) <= 5 + 2  # one more than allowed, plus one in flight per other worker
    assert error.failed == len(dlq)
    check_accounted(1000, error.results, dlq, error.not_started)


def test_a_fraction_is_judged_on_finished_items() -> None:
    dlq = memory_dlq()
    # 1 in 5 fails: within a 25% budget the run completes
    out = execute(fails_on_multiples_of(5), range(100), backend="in_process", max_failures=0.25,
                  dlq=dlq)
    assert len(out) == 100 and len(dlq) == 20
    with pytest.raises(FailureBudgetExceededError) as info:
        execute(fails_on_multiples_of(5), range(100), backend="in_process", chunksize=10,
                max_failures=0.1, dlq=memory_dlq())
    assert info.value.failed > 0.1 * info.value.finished
    assert info.value.finished >= FRACTION_MIN_ITEMS


def test_circuit_open_entries_do_not_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=3600)
    dlq = memory_dlq()
    out = execute(fails_on_multiples_of(1), range(50), backend="in_process", chunksize=1,
                  circuit_breaker=breaker, max_failures=3, dlq=dlq)
    assert len(out) == 50
    reasons = sorted({e.reason for e in dlq.get_entries()})
    assert reasons == ["circuit_open", "exception"]


def test_imap_yields_what_finished_then_raises() -> None:
    seen: list[Any] = []
    with pytest.raises(FailureBudgetExceededError) as info:
        for value in imap(fails_on_multiples_of(7), range(1, 100), backend="in_process",
                          chunksize=5, max_failures=1, dlq=memory_dlq()):
            seen.append(value)
    error = info.value
    assert seen == error.results[: len(seen)]
    assert len(seen) == error.not_started[0].start  # in order: everything before the first gap


@given(
    fail=st.lists(st.booleans(), min_size=0, max_size=60),
    budget=st.one_of(st.integers(0, 10), st.floats(0.01, 0.99)),
    chunksize=st.integers(1, 12),
)
def test_every_input_is_a_result_a_dlq_entry_or_not_started(
    fail: list[bool], budget: float, chunksize: int
) -> None:
    dlq = memory_dlq()

    def func(i: int) -> int:
        if fail[i]:
            raise ValueError(i)
        return i

    try:
        results = execute(func, range(len(fail)), backend="in_process", chunksize=chunksize,
                          max_failures=budget, dlq=dlq)
        not_started: list[range] = []
    except FailureBudgetExceededError as error:
        results, not_started = error.results, error.not_started
        assert error.failed > (budget if isinstance(budget, int) else budget * error.finished)
    check_accounted(len(fail), results, dlq, not_started)
    for position, value in enumerate(results):
        if is_failure(value):
            assert fail[position]
        elif value is not None:
            assert not fail[position] and value == position


def test_a_resumed_run_starts_exactly_the_items_not_started(tmp_path: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = Checkpoint(tmp_path / "run.ckpt")
    dlq = memory_dlq()
    monkeypatch.setenv("AMORSIZE_TEST_BROKEN", "1")
    CALLED.clear()
    with pytest.raises(FailureBudgetExceededError) as info:
        execute(sometimes_broken, range(60), backend="in_process", chunksize=8, max_failures=2,
                dlq=dlq, checkpoint=checkpoint)
    waiting = [p for r in info.value.not_started for p in r]
    assert waiting and len(dlq) == 3
    monkeypatch.delenv("AMORSIZE_TEST_BROKEN")
    CALLED.clear()
    out = execute(sometimes_broken, range(60), backend="in_process", chunksize=8,
                  dlq=dlq, checkpoint=Checkpoint(tmp_path / "run.ckpt"))
    assert sorted(CALLED) == waiting
    dead = {e.metadata["index"] for e in dlq.get_entries()}
    assert len(dlq) == 3
    assert [p for p, v in enumerate(out) if is_failure(v)] == sorted(dead)
    assert [v for p, v in enumerate(out) if p not in dead] == [p * 10 for p in range(60) if p not in dead]
