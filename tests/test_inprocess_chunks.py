"""In process, ``execute()`` runs a list as one chunk unless something follows the run.

One chunk is what a list comprehension does; chunks stay whenever a caller can see
them: ``imap`` (results come as the run goes), a progress callback, a checkpoint, a
circuit breaker, a chunksize the user set. A failure still reaches the DLQ before
the next item starts.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from amorsize import CircuitBreaker, DeadLetterQueue, DLQPolicy, execute, imap, is_failure
from amorsize.run.dispatch import Dispatcher

N = 5_000


@pytest.fixture
def chunk_sizes(monkeypatch: Any) -> List[int]:
    sizes: List[int] = []
    original = Dispatcher._accept

    def spy(self: Dispatcher, task: Any, result: Any) -> Any:
        sizes.append(len(task.items))
        return original(self, task, result)

    monkeypatch.setattr(Dispatcher, "_accept", spy)
    return sizes


def test_execute_in_process_runs_a_list_as_one_chunk(chunk_sizes: List[int]) -> None:
    assert execute(abs, list(range(-N, 0)), backend="in_process") == list(range(N, 0, -1))
    assert chunk_sizes == [N]


def test_one_chunk_still_stops_at_each_failure_for_the_dlq(chunk_sizes: List[int]) -> None:
    seen: List[int] = []
    in_dlq_before_next: List[bool] = []

    def fail_on_sevens(x: int) -> int:
        if x % 1000 == 8:  # the item after a failure: it must already be in the DLQ
            in_dlq_before_next.append(x - 1 in seen)
        if x % 1000 == 7:
            raise ValueError(f"item {x}")
        return x

    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False),
                          on_add=lambda entry, count: seen.append(entry.item))
    results = execute(fail_on_sevens, list(range(N)), backend="in_process", dlq=dlq)
    bad = [x for x in range(N) if x % 1000 == 7]
    assert [i for i, r in enumerate(results) if is_failure(r)] == bad
    assert [r for r in results if not is_failure(r)] == [x for x in range(N) if x not in bad]
    assert sorted(seen) == bad
    assert sorted(r.item for r in dlq.get_entries()) == bad
    assert in_dlq_before_next == [True] * len(bad)
    # Split at each failure: the segment ending in a failure, then the rest.
    assert sum(chunk_sizes) == N and len(chunk_sizes) == len(bad) + 1


@pytest.mark.parametrize("options", [
    {"on_progress": lambda done, total: None},
    {"chunksize": 100},
    {"circuit_breaker": CircuitBreaker(failure_threshold=1000)},
], ids=["on_progress", "chunksize", "breaker"])
def test_options_that_follow_the_run_keep_chunks(options: Dict[str, Any], chunk_sizes: List[int]) -> None:
    assert execute(abs, list(range(N)), backend="in_process", **options) == list(range(N))
    assert len(chunk_sizes) > 1


def test_imap_in_process_yields_before_running_the_whole_list() -> None:
    calls: List[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    results = imap(record, list(range(N)), backend="in_process")
    assert next(results) == 0
    assert len(calls) < N
    assert list(results) == list(range(1, N))
