"""A thread given up on starts no further item: the rest of its chunk runs once, elsewhere;
the items it finished before keep their values.

Before the fix, a thread abandoned at a timeout woke from its long call and ran
the rest of its chunk too, after the replacement thread had run it: every item
after the hung one ran twice (side effects twice). And when the run stopped
(imap closed, Ctrl-C), busy threads went on through their chunks in the
background after execute() had returned.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, execute, imap, is_failure

pytestmark = pytest.mark.timeout(60)

HANG_SECONDS = 1.0


class Calls:
    """Counts calls per item, from any thread."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def add(self, x: int) -> None:
        with self._lock:
            self.counts[x] += 1


def test_the_rest_of_a_timed_out_chunk_runs_once() -> None:
    calls = Calls()

    def hang_on_one(x: int) -> int:
        calls.add(x)
        if x == 1:
            time.sleep(HANG_SECONDS)
        return x

    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    values = execute(hang_on_one, range(6), backend="threads", n_jobs=1, chunksize=6, timeout=0.2,
                     dlq=dlq)
    assert [v for v in values if not is_failure(v)] == [0, 2, 3, 4, 5]
    time.sleep(HANG_SECONDS + 0.5)  # the abandoned thread wakes up meanwhile
    assert calls.counts == {x: 1 for x in range(6)}


def test_the_items_before_a_timed_out_one_keep_their_values_and_run_once() -> None:
    """Before the fix, the items a thread had finished before its item timed out ran
    again with the rest of the chunk: a second call to the service for each (their
    values were in this process all along, unlike a dead worker's)."""
    calls = Calls()

    def hang_on_four(x: int) -> int:
        calls.add(x)
        if x == 4:
            time.sleep(HANG_SECONDS)
        if x == 2:
            raise ValueError("bad record 2")
        return x * 10

    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    values = execute(hang_on_four, range(8), backend="threads", n_jobs=1, chunksize=8, timeout=0.2,
                     dlq=dlq)
    assert [v if not is_failure(v) else v.reason for v in values] == [
        0, 10, "exception", 30, "timeout", 50, 60, 70]
    assert sorted((e.item, e.reason) for e in dlq.get_entries()) == [(2, "exception"), (4, "timeout")]
    time.sleep(HANG_SECONDS + 0.5)
    assert calls.counts == {x: 1 for x in range(8)}


def test_threads_start_no_item_after_imap_is_closed() -> None:
    calls = Calls()

    def slow_after_49(x: int) -> int:
        calls.add(x)
        if x > 49:
            time.sleep(0.02)
        return x

    # The first chunk (0-49) ends at once; the second thread is then inside 50-99.
    results: Any = imap(slow_after_49, range(200), backend="threads", n_jobs=2, chunksize=50)
    assert next(results) == 0
    results.close()
    after_close = sum(calls.counts.values())
    time.sleep(0.5)  # a thread still going through its chunk would run ~25 more items
    assert sum(calls.counts.values()) <= after_close + 2  # at most the call each thread was in
