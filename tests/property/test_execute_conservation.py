"""Conservation: every input item ends exactly once, as its result or as one DLQ entry.

Hypothesis draws a plan per item (succeed, raise, fail a few times then succeed,
crash the worker, overrun the timeout), a chunk size and a retry policy, and
checks the run against the plan: nothing lost, nothing duplicated, every DLQ
entry with the reason its fault calls for. Fork only; the fault tests cover spawn.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amorsize import DeadLetterQueue, DLQPolicy, RetryPolicy, execute, imap, is_failure

pytestmark = pytest.mark.timeout(170)

TIMEOUT = 1.0
HANG = 5.0

#: Attempts per item index, per worker process: a re-dispatched item (its chunk's
#: worker died) runs in a new process and starts counting again, as it should.
_attempts: Dict[int, int] = defaultdict(int)

Item = Tuple[int, str, int]  # (index, kind, failures before success)


def planned(item: Item) -> int:
    index, kind, fail_times = item
    _attempts[index] += 1
    if kind == "raise":
        raise ValueError(f"item {index} always fails")
    if kind == "transient" and _attempts[index] <= fail_times:
        raise ConnectionError(f"item {index} attempt {_attempts[index]}")
    if kind == "crash":
        os._exit(3)
    if kind == "hang":
        time.sleep(HANG)
    return index * 10 + 1


KINDS = st.sampled_from(["ok"] * 6 + ["raise", "transient", "crash"])


@st.composite
def plans(draw: Any) -> Tuple[List[Item], Any, int, bool]:
    kinds = draw(st.lists(KINDS, min_size=1, max_size=60))
    fails = draw(st.lists(st.integers(1, 3), min_size=len(kinds), max_size=len(kinds)))
    items = [(i, kind, k) for i, (kind, k) in enumerate(zip(kinds, fails))]
    with_timeout = draw(st.integers(0, 3)) == 0  # a hang in about one example in four
    if with_timeout:
        spot = draw(st.integers(0, len(items) - 1))
        items[spot] = (spot, "hang", 0)
    chunksize = draw(st.one_of(st.none(), st.integers(1, 12)))
    retries = draw(st.integers(0, 2))
    return items, chunksize, retries, with_timeout


def expected_reason(item: Item, retries: int) -> Any:
    """None when the item should succeed, else the DLQ reason it should end with."""
    _index, kind, fail_times = item
    if kind == "ok" or (kind == "transient" and fail_times <= retries):
        return None
    return {"raise": "exception", "transient": "exception", "crash": "worker_crash",
            "hang": "timeout"}[kind]


@settings(max_examples=10)
@given(plans())
def test_every_item_ends_exactly_once(plan: Tuple[List[Item], Any, int, bool]) -> None:
    items, chunksize, retries, with_timeout = plan
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
    retry = RetryPolicy(max_retries=retries, initial_delay=0, jitter=False) if retries else None
    results = execute(
        planned, items, n_jobs=2, chunksize=chunksize, retry=retry, dlq=dlq,
        timeout=TIMEOUT if with_timeout else None, max_crashes=len(items), start_method="fork",
    )

    assert len(results) == len(items)
    entries = dlq.get_entries()
    dead = [e.item[0] for e in entries]
    assert len(dead) == len(set(dead)), f"an item was dead-lettered twice: {sorted(dead)}"
    by_index = {e.item[0]: e for e in entries}
    for item, value in zip(items, results):
        index = item[0]
        reason = expected_reason(item, retries)
        if reason is None:
            assert value == index * 10 + 1, (item, value)
            assert index not in by_index
            continue
        assert is_failure(value) and value.reason == reason, (item, value)
        entry = by_index[index]
        assert entry.item == item and entry.reason == reason
        assert entry.entry_id == value.entry_id
        if reason == "exception":
            assert entry.retry_count == retries
    assert set(by_index) == {i for i, v in enumerate(results) if is_failure(v)}


@settings(max_examples=8)
@given(plans())
def test_imap_unordered_conserves_items(plan: Tuple[List[Item], Any, int, bool]) -> None:
    items, chunksize, retries, with_timeout = plan
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
    retry = RetryPolicy(max_retries=retries, initial_delay=0, jitter=False) if retries else None
    out = list(imap(
        planned, iter(items), n_jobs=2, chunksize=chunksize, retry=retry, dlq=dlq, ordered=False,
        timeout=TIMEOUT if with_timeout else None, max_crashes=len(items), start_method="fork",
    ))
    assert len(out) == len(items)
    succeeded = sorted(v for v in out if not is_failure(v))
    assert succeeded == [item[0] * 10 + 1 for item in items if expected_reason(item, retries) is None]
    dead = sorted(e.item[0] for e in dlq.get_entries())
    assert dead == [item[0] for item in items if expected_reason(item, retries) is not None]
    assert sorted(v.entry_id for v in out if is_failure(v)) == sorted(
        e.entry_id for e in dlq.get_entries()
    )
