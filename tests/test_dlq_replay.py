"""replay_failed_items: order, what leaves and what stays, new errors, concurrent adds, disk."""

from __future__ import annotations

import threading

import pytest

from amorsize import (
    DeadLetterQueue,
    DLQFormat,
    DLQPolicy,
    InvalidTypeError,
    PickleNotAllowedError,
    replay_failed_items,
)

ERR = ValueError("original")


class StillBroken(Exception):
    pass


def memory_queue(**kw) -> DeadLetterQueue:
    kw.setdefault("max_entries", 0)
    return DeadLetterQueue(DLQPolicy(auto_persist=False, **kw))


def fixed_except_odd(item: int) -> int:
    if item % 2:
        raise StillBroken(f"{item} is odd")
    return item * 10


def test_results_in_dlq_order_successes_leave_failures_stay():
    queue = memory_queue()
    for item in (4, 1, 2, 3, 8):
        queue.add(item, ERR, retry_count=1, metadata={"src": item})
    results, still_failed = replay_failed_items(queue, fixed_except_odd)
    assert results == [40, 20, 80]
    assert [e.item for e in still_failed] == [1, 3]
    assert [e.item for e in queue.get_entries()] == [1, 3]
    assert queue.get_entries() == still_failed


def test_failures_carry_their_new_error_and_one_more_retry():
    queue = memory_queue()
    before = queue.add(1, ERR, retry_count=2, metadata={"src": "a"}, reason="timeout")
    _, (after,) = replay_failed_items(queue, fixed_except_odd)
    assert after.entry_id == before.entry_id
    assert after.retry_count == 3
    assert after.error_type == "StillBroken"  # not flattened to Exception
    assert after.error_qualname == f"{__name__}.StillBroken"
    assert after.error_message == "1 is odd"
    assert after.reason == "exception"
    assert "in fixed_except_odd" in after.traceback
    assert after.metadata["src"] == "a"
    assert "last_replay_at" in after.metadata
    assert queue.get_entries() == [after]


def test_replaying_twice_counts_each_attempt():
    queue = memory_queue()
    queue.add(1, ERR)
    replay_failed_items(queue, fixed_except_odd)
    replay_failed_items(queue, fixed_except_odd)
    assert queue.get_entries()[0].retry_count == 2


def test_clear_on_success_false_keeps_recovered_items():
    queue = memory_queue()
    for item in (1, 2):
        queue.add(item, ERR)
    results, _still_failed = replay_failed_items(queue, fixed_except_odd, clear_on_success=False)
    assert results == [20]
    assert [(e.item, e.retry_count) for e in queue.get_entries()] == [(1, 1), (2, 0)]


def test_an_empty_queue_replays_to_nothing():
    assert replay_failed_items(memory_queue(), fixed_except_odd) == ([], [])


def test_func_must_be_callable():
    with pytest.raises(InvalidTypeError, match="func="):
        replay_failed_items(memory_queue(), "fixed_except_odd")  # type: ignore[arg-type]


def test_entries_the_func_itself_adds_are_kept():
    queue = memory_queue()
    for item in range(4):
        queue.add(item, ERR)

    def add_a_follow_up(item: int) -> int:
        queue.add(("follow-up", item), RuntimeError("downstream"))
        return item

    results, still_failed = replay_failed_items(queue, add_a_follow_up)
    assert results == [0, 1, 2, 3]
    assert still_failed == []
    assert [e.item for e in queue.get_entries()] == [("follow-up", i) for i in range(4)]


@pytest.mark.timeout(60)
def test_entries_another_thread_adds_during_a_replay_are_kept():
    queue = memory_queue()
    for item in range(20):
        queue.add(item, ERR)
    started, release = threading.Event(), threading.Event()
    added = []

    def slow(item: int) -> int:
        started.set()
        release.wait(10)
        return fixed_except_odd(item)

    def other_thread() -> None:
        started.wait(10)
        for i in range(50):
            added.append(queue.add(("concurrent", i), ERR).entry_id)
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    results, still_failed = replay_failed_items(queue, slow)
    thread.join(10)
    assert len(results) == 10 and len(still_failed) == 10
    ids = [e.entry_id for e in queue.get_entries()]
    assert set(added) <= set(ids)
    assert len(ids) == 60


@pytest.mark.parametrize("fmt", list(DLQFormat))
def test_replay_is_persisted(tmp_path, fmt):
    queue = DeadLetterQueue(DLQPolicy(directory=tmp_path, format=fmt, max_entries=0))
    for item in (1, 2, 3):
        queue.add(item, ERR)
    replay_failed_items(queue, fixed_except_odd)
    late = queue.add(5, ERR)
    queue.close()
    reopened = DeadLetterQueue(DLQPolicy(directory=tmp_path, format=fmt, max_entries=0))
    assert [(e.item, e.retry_count, e.error_type) for e in reopened.get_entries()] == [
        (1, 1, "StillBroken"), (3, 1, "StillBroken"), (5, 0, "ValueError")]
    assert reopened.get_entries()[-1] == late
    reopened.close()


def test_replay_refuses_items_that_pickle_may_not_load(tmp_path):
    queue = DeadLetterQueue(DLQPolicy(directory=tmp_path))
    queue.add((1, 2), ERR)  # a tuple is stored as cloudpickle bytes in the JSON format
    queue.close()
    blind = DeadLetterQueue(DLQPolicy(directory=tmp_path))
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        replay_failed_items(blind, lambda item: item)
    assert len(blind) == 1  # nothing was touched
    blind.close()
    trusting = DeadLetterQueue(DLQPolicy(directory=tmp_path, allow_pickle=True))
    assert replay_failed_items(trusting, lambda item: sum(item)) == ([3], [])
    trusting.close()
