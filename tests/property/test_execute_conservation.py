"""Conservation: every input item ends exactly once, as its result or as one DLQ entry.

Hypothesis draws a plan per item (succeed, raise, fail a few times then succeed,
crash the worker, overrun the timeout), the path (the default one, with its
in-process dry run and n_jobs/chunksize chosen by the optimizer, or n_jobs=2 with a
drawn chunk size), the start method (fork or spawn), a retry policy and a crash
budget, and checks the run against the plan: nothing lost, nothing duplicated,
results aligned, every DLQ entry with the reason its fault calls for. A run whose
crashes exceed the budget must end in CrashLoopError, and everything it reported
before that must still be accounted for.

The default path runs sampled items in this process, so its plans hold no crash or
hang (that would kill the test runner, as it would a user's program: ``dry_run=False``
exists for that), and transient items only past the sample, where every call counts
the same whichever process runs it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import psutil
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from amorsize import (
    CrashLoopError,
    DeadLetterQueue,
    DLQPolicy,
    RetryPolicy,
    execute,
    imap,
    is_failure,
)

pytestmark = [pytest.mark.timeout(400), pytest.mark.usefixtures("no_leaked_children")]

TIMEOUT = 2.0
HANG = 30.0  # far past TIMEOUT: only the watchdog ends it
#: The dry run samples at most this many leading items (optimize(sample_size=5)).
SAMPLED = 5
#: The crash budget when max_crashes is None, for runs of fewer than 100 items.
DEFAULT_CRASH_BUDGET = 10
#: Examples per start method: a spawn worker costs about a second to start (and a crash
#: restarts one), so spawn runs fewer.
EXAMPLES = {"fork": 30, "spawn": 8}
UNORDERED_EXAMPLES = {"fork": 15, "spawn": 5}

#: Attempts per (process, item index): a re-dispatched item (its chunk's worker died)
#: runs in a new process and starts counting again, as it should.
_attempts: Dict[Tuple[int, int], int] = defaultdict(int)

Item = Tuple[int, str, int]  # (index, kind, failures before success)


def planned(item: Item) -> int:
    index, kind, fail_times = item
    key = (os.getpid(), index)
    _attempts[key] += 1
    if kind == "raise":
        raise ValueError(f"item {index} always fails")
    if kind == "transient" and _attempts[key] <= fail_times:
        raise ConnectionError(f"item {index} attempt {_attempts[key]}")
    if kind == "crash":
        os._exit(3)
    if kind == "hang":
        time.sleep(HANG)
    return index * 10 + 1


@dataclass
class Plan:
    items: List[Item]
    default_path: bool
    chunksize: Optional[int]
    retries: int
    with_timeout: bool
    start_method: str
    max_crashes: Optional[int]

    def options(self) -> Dict[str, Any]:
        retry = (RetryPolicy(max_retries=self.retries, initial_delay=0, jitter=False)
                 if self.retries else None)
        options: Dict[str, Any] = dict(retry=retry, start_method=self.start_method,
                                       max_crashes=self.max_crashes)
        if not self.default_path:
            options.update(n_jobs=2, chunksize=self.chunksize,
                           timeout=TIMEOUT if self.with_timeout else None)
        return options

    @property
    def crash_loop(self) -> bool:
        """Whether the crashes exceed the budget, so the run must stop with CrashLoopError."""
        budget = DEFAULT_CRASH_BUDGET if self.max_crashes is None else self.max_crashes
        return sum(kind == "crash" for _i, kind, _k in self.items) > budget

    def budget(self) -> int:
        return DEFAULT_CRASH_BUDGET if self.max_crashes is None else self.max_crashes


@st.composite
def plans(draw: Any, start_method: str) -> Plan:
    default_path = draw(st.booleans())
    size = draw(st.integers(1, 60))
    items: List[Item] = []
    for index in range(size):
        if default_path:
            choices = ["ok"] * 6 + ["raise"] + (["transient"] if index >= SAMPLED else [])
        else:
            choices = ["ok"] * 6 + ["raise", "transient", "crash"]
        items.append((index, draw(st.sampled_from(choices)), draw(st.integers(1, 3))))
    with_timeout = not default_path and draw(st.integers(0, 3)) == 0  # a hang in ~1 in 8
    if with_timeout:
        spot = draw(st.integers(0, len(items) - 1))
        items[spot] = (spot, "hang", 0)
    chunksize = None if default_path else draw(st.one_of(st.none(), st.integers(1, 12)))
    retries = draw(st.integers(0, 2))
    max_crashes = draw(st.one_of(st.none(), st.integers(0, 3), st.just(len(items))))
    return Plan(items, default_path, chunksize, retries, with_timeout, start_method, max_crashes)


def expected_reason(item: Item, retries: int) -> Any:
    """None when the item should succeed, else the DLQ reason it should end with."""
    _index, kind, fail_times = item
    if kind == "ok" or (kind == "transient" and fail_times <= retries):
        return None
    return {"raise": "exception", "transient": "exception", "crash": "worker_crash",
            "hang": "timeout"}[kind]


def _running_worker(proc: psutil.Process) -> bool:
    try:
        return (proc.status() != psutil.STATUS_ZOMBIE
                and "resource_tracker" not in " ".join(proc.cmdline()))
    except (psutil.Error, OSError):  # exited (and reaped) while we looked
        return False


def assert_no_workers_left(before: set) -> None:
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and _running_worker(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"worker processes left behind: {left}"


def check_reported(plan: Plan, results: List[Any], dlq: DeadLetterQueue) -> Dict[int, Any]:
    """Every reported value against the plan; returns the DLQ entries by item index."""
    entries = dlq.get_entries()
    dead = [e.item[0] for e in entries]
    assert len(dead) == len(set(dead)), f"an item was dead-lettered twice: {sorted(dead)}"
    by_index = {e.item[0]: e for e in entries}
    for index, entry in by_index.items():  # nothing dead-lettered that should have succeeded
        item = plan.items[index]
        assert entry.item == item and entry.reason == expected_reason(item, plan.retries), entry
        if entry.reason == "exception":
            assert entry.retry_count == plan.retries
    for item, value in zip(plan.items, results):
        index = item[0]
        if expected_reason(item, plan.retries) is None:
            assert value == index * 10 + 1, (item, value)
            continue
        assert is_failure(value) and value.reason == expected_reason(item, plan.retries), (item, value)
        assert by_index[index].entry_id == value.entry_id
    return by_index


def _fresh(plan: Plan) -> DeadLetterQueue:
    if currently_in_test_context():  # the explicit plans run outside hypothesis
        event(f"path={'default' if plan.default_path else 'n_jobs=2'}")
        event(f"crash_loop={plan.crash_loop}")
    _attempts.clear()  # this process's counts (dry run, serial path) start again per example
    return DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))


#: Cases every run covers, whatever hypothesis draws: failures among the sampled items on
#: the default path, a crash budget of zero, a budget met exactly, and a hang.
EXPLICIT = [
    ([(i, "raise" if i % 5 == 0 else "ok", 1) for i in range(23)], True, None, 0, False, None),
    ([(0, "ok", 1), (1, "crash", 1), (2, "ok", 1), (3, "crash", 1)], False, 1, 1, False, 0),
    ([(0, "crash", 1), (1, "transient", 2), (2, "crash", 1)], False, 2, 2, False, 2),
    ([(0, "ok", 1), (1, "hang", 0), (2, "transient", 1), (3, "ok", 1)], False, None, 1, True, 0),
]


def explicit_plans(start_method: str) -> List[Plan]:
    return [Plan(items, default, chunk, retries, hang, start_method, budget)
            for items, default, chunk, retries, hang, budget in EXPLICIT]


def test_every_item_ends_exactly_once(start_method: str) -> None:
    for plan in explicit_plans(start_method):
        _ordered_run(plan)
    settings(max_examples=EXAMPLES[start_method])(given(plans(start_method))(_ordered_run))()


def _ordered_run(plan: Plan) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    dlq = _fresh(plan)
    if not plan.crash_loop:
        results = execute(planned, plan.items, dlq=dlq, **plan.options())
        assert len(results) == len(plan.items)
        by_index = check_reported(plan, results, dlq)
        assert set(by_index) == {i for i, v in enumerate(results) if is_failure(v)}
    else:
        reported: List[Any] = []
        with pytest.raises(CrashLoopError, match=f"max_crashes={plan.max_crashes}"):
            for value in imap(planned, plan.items, dlq=dlq, **plan.options()):
                reported.append(value)
        # What was yielded is a prefix of the input, right item by item; the DLQ holds
        # those failures and maybe some of chunks finished but not yet yielded.
        by_index = check_reported(plan, reported, dlq)
        assert {i for i, v in enumerate(reported) if is_failure(v)} <= set(by_index)
        crashes = [e for e in by_index.values() if e.reason == "worker_crash"]
        assert len(crashes) == plan.budget() + 1
    assert_no_workers_left(before)


def test_imap_unordered_conserves_items(start_method: str) -> None:
    for plan in explicit_plans(start_method):
        _unordered_run(plan)
    settings(max_examples=UNORDERED_EXAMPLES[start_method])(given(plans(start_method))(
        _unordered_run))()


def _unordered_run(plan: Plan) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    dlq = _fresh(plan)
    out: List[Any] = []
    run = imap(planned, iter(plan.items), dlq=dlq, ordered=False, **plan.options())
    if plan.crash_loop:
        with pytest.raises(CrashLoopError):
            out.extend(run)
    else:
        out.extend(run)
    assert_no_workers_left(before)
    dead = sorted(e.item[0] for e in dlq.get_entries())
    assert len(dead) == len(set(dead))
    should_fail = [item[0] for item in plan.items if expected_reason(item, plan.retries) is not None]
    reported_failures = sorted(v.entry_id for v in out if is_failure(v))
    if plan.crash_loop:
        assert set(dead) <= set(should_fail)
        assert {v for v in out if not is_failure(v)} <= {
            item[0] * 10 + 1 for item in plan.items if expected_reason(item, plan.retries) is None
        }
        assert set(reported_failures) <= {e.entry_id for e in dlq.get_entries()}
        assert sum(e.reason == "worker_crash" for e in dlq.get_entries()) == plan.budget() + 1
        return
    assert len(out) == len(plan.items)
    succeeded = sorted(v for v in out if not is_failure(v))
    assert succeeded == [item[0] * 10 + 1 for item in plan.items
                         if expected_reason(item, plan.retries) is None]
    assert dead == should_fail
    assert reported_failures == sorted(e.entry_id for e in dlq.get_entries())
