"""Conservation for the I/O paths: the threads backend and async def functions on every backend.

The property of test_execute_conservation.py (every input ends exactly once, as its
result or as one DLQ entry with the reason its fault calls for), for plans without
crashes: a crash in a thread or in the caller's loop takes the whole process down.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amorsize import DeadLetterQueue, DLQPolicy, RetryPolicy, execute, is_failure

pytestmark = pytest.mark.timeout(170)

TIMEOUT = 0.5
HANG = 3.0
_attempts: Dict[int, int] = defaultdict(int)
Item = Tuple[int, str, int]


def _outcome(item: Item) -> int:
    index, kind, fail_times = item
    if kind == "raise":
        raise ValueError(f"item {index} always fails")
    if kind == "transient":
        # Counted for transient items only: a "hang" call of an earlier example, given
        # up on at its timeout, ends here seconds later and must not count for this one.
        _attempts[index] += 1
        if _attempts[index] <= fail_times:
            raise ConnectionError(f"item {index} attempt {_attempts[index]}")
    return index * 10 + 1


def planned(item: Item) -> int:
    if item[1] == "hang":
        time.sleep(HANG)
    return _outcome(item)


async def aplanned(item: Item) -> int:
    await asyncio.sleep(HANG if item[1] == "hang" else 0.001)
    return _outcome(item)


@st.composite
def plans(draw: Any) -> Tuple[List[Item], Any, int, bool]:
    kinds = draw(st.lists(st.sampled_from(["ok"] * 6 + ["raise", "transient"]), min_size=1, max_size=50))
    fails = draw(st.lists(st.integers(1, 3), min_size=len(kinds), max_size=len(kinds)))
    items = [(i, kind, k) for i, (kind, k) in enumerate(zip(kinds, fails))]
    with_timeout = draw(st.integers(0, 3)) == 0
    if with_timeout:
        spot = draw(st.integers(0, len(items) - 1))
        items[spot] = (spot, "hang", 0)
    return items, draw(st.one_of(st.none(), st.integers(1, 12))), draw(st.integers(0, 2)), with_timeout


def expected_reason(item: Item, retries: int) -> Any:
    _index, kind, fail_times = item
    if kind == "ok" or (kind == "transient" and fail_times <= retries):
        return None
    return {"raise": "exception", "transient": "exception", "hang": "timeout"}[kind]


@pytest.mark.parametrize("func, backend", [
    (planned, "threads"), (aplanned, "in_process"), (aplanned, "threads"), (aplanned, "processes"),
])
@settings(max_examples=6, deadline=None)
@given(plan=plans())
def test_every_item_ends_exactly_once(
    func: Any, backend: str, plan: Tuple[List[Item], Any, int, bool]
) -> None:
    items, chunksize, retries, with_timeout = plan
    _attempts.clear()
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
    retry = RetryPolicy(max_retries=retries, initial_delay=0, jitter=False) if retries else None
    results = execute(
        func, items, n_jobs=None if backend == "in_process" else 2, backend=backend, chunksize=chunksize,
        retry=retry, dlq=dlq, timeout=TIMEOUT if with_timeout else None, start_method="fork",
        concurrency=4 if func is aplanned else None,
    )
    assert len(results) == len(items)
    entries = dlq.get_entries()
    dead = [e.item[0] for e in entries]
    assert len(dead) == len(set(dead)), f"an item was dead-lettered twice: {sorted(dead)}"
    by_index = {e.item[0]: e for e in entries}
    for item, value in zip(items, results):
        reason = expected_reason(item, retries)
        if item[1] == "transient" and backend != "processes":  # (counted in this process)
            # Run once: a chunk whose later item timed out keeps the values of the items
            # before it (a thread's are in this process; async items are cancelled).
            assert _attempts[item[0]] == min(item[2] + 1, retries + 1), (item, _attempts[item[0]])
        if reason is None:
            assert value == item[0] * 10 + 1, (item, value)
            continue
        assert is_failure(value) and value.reason == reason, (item, value)
        assert by_index[item[0]].entry_id == value.entry_id
    assert set(by_index) == {i for i, v in enumerate(results) if is_failure(v)}
