"""Issue 12, "Why" 10: a function that forks, and one that closes every fd above 2.

Today a forked copy of a worker that returns too can write to the result pipe:
one run in 15 returned other inputs' values with no error, another raised
``AssertionError: positions never completed``, and the copies lived on with
ppid 1. Closing every fd gets the items after the culprit blamed too. Target:
a result is accepted only from the worker and chunk it was sent to; anything
else is a crash of that worker; only the item that was running is blamed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, List

import pytest
from fault_probes import close_fds_at, fork_and_return, recorded_pids
from fault_support import (
    GONE_WITHIN,
    ProcessTag,
    assert_pids_gone,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
)

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("no_leaked_children")]

FORK_AT = frozenset({5, 17, 29})
N_ITEMS = 40
#: A race, so several runs per test: wrong values showed up about once in 15 runs.
REPEATS = 3


def check_no_foreign_values(results: List[Any], dlq: DeadLetterQueue) -> None:
    """Every position holds its own input's result or a Failure; never another input's value."""
    assert len(results) == N_ITEMS
    wrong = [(i, v) for i, v in enumerate(results) if not is_failure(v) and v != i * 2]
    assert not wrong, f"positions holding another input's result: {wrong}"
    failed = [i for i, v in enumerate(results) if is_failure(v)]
    # One forking call breaks at most one worker, and only its running item is blamed.
    assert len(failed) <= len(FORK_AT), f"{len(failed)} items blamed for {len(FORK_AT)} forks"
    assert {results[i].reason for i in failed} <= {"worker_crash"}, [results[i] for i in failed]
    assert sorted(e.metadata["index"] for e in dlq.get_entries()) == failed


@pytest.mark.parametrize("run", range(REPEATS))
def test_a_forked_copy_of_a_worker_never_delivers_a_value(
    tmp_path: Path, start_method: str, run: int, process_tag: ProcessTag
) -> None:
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    func = functools.partial(fork_and_return, at=FORK_AT, pid_dir=str(tmp_path))
    results = execute(func, range(N_ITEMS), n_jobs=2, chunksize=4, dlq=dlq,
                      start_method=start_method)
    check_no_foreign_values(results, dlq)
    assert_pids_gone(recorded_pids(tmp_path, "copy-"), GONE_WITHIN, "forked copies of workers",
                     f"{GONE_WITHIN} s after execute() returned")


@pytest.mark.parametrize(
    "options",
    [{"n_jobs": 2, "chunksize": 4}, {"n_jobs": 2, "chunksize": 10}, {"n_jobs": 1, "timeout": 30.0}],
    ids=["chunk-of-4", "chunk-of-10", "one-worker"],
)
def test_closing_every_fd_blames_only_the_culprit(
    start_method: str, options: Dict[str, Any], process_tag: ProcessTag
) -> None:
    # Item 5 closes its worker's pipes; the items after it in the chunk are innocent.
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    func = functools.partial(close_fds_at, at=5)
    results = execute(func, range(12), dlq=dlq, start_method=start_method, **options)
    assert [i for i, v in enumerate(results) if is_failure(v)] == [5], results
    assert [v for i, v in enumerate(results) if i != 5] == [i * 2 for i in range(12) if i != 5]
    (entry,) = dlq.get_entries()
    assert entry.item == 5 and entry.reason == "worker_crash"
