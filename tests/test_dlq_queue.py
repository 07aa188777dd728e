"""DeadLetterQueue in memory: add, read, filter, summary, remove, update, limits, threads."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import logging
import threading
import time
import tracemalloc

import pytest

from amorsize import DeadLetterQueue, DLQEntry, DLQPolicy, InvalidArgumentError, InvalidTypeError

ERR = ValueError("boom")

SUMMARY_KEYS = {
    "total_entries", "error_types", "avg_retry_count", "oldest_timestamp", "newest_timestamp",
    "reasons", "top_messages", "pruned", "persist_errors",
}


def memory_queue(**kw) -> DeadLetterQueue:
    kw.setdefault("max_entries", 0)
    return DeadLetterQueue(DLQPolicy(auto_persist=False, **kw))


def entry(item, error_type="ValueError", message="m", timestamp=1.0, **kw) -> DLQEntry:
    return DLQEntry(item, error_type, message, timestamp, **kw)


class TransientError(Exception):
    pass


# -- adding and reading -------------------------------------------------------------


def test_add_returns_the_entry_it_stored():
    queue = memory_queue()
    stored = queue.add("a", KeyError("k"), retry_count=2, metadata={"m": 1})
    assert queue.get_entries() == [stored]
    assert (stored.item, stored.error_type, stored.retry_count, stored.metadata) == (
        "a", "KeyError", 2, {"m": 1})


def test_add_accepts_only_exception_instances():
    queue = memory_queue()
    with pytest.raises(InvalidTypeError, match="error="):
        queue.add("a", "not an exception")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        queue.add("a", ValueError)  # type: ignore[arg-type]  # the class, not an instance
    queue.add("a", KeyboardInterrupt())  # any BaseException instance
    assert len(queue) == 1


def test_the_policy_must_be_a_policy():
    with pytest.raises(InvalidTypeError, match="policy="):
        DeadLetterQueue({"directory": "x"})  # type: ignore[arg-type]


def test_get_entries_is_a_copy_in_insertion_order():
    queue = memory_queue()
    added = [queue.add(i, ERR) for i in (3, 1, 2)]
    entries = queue.get_entries()
    assert entries == added
    entries.clear()
    assert queue.get_entries() == added


def test_add_entry_and_extend():
    queue = memory_queue()
    first = entry("x", entry_id="a")
    assert queue.add_entry(first) is first
    assert queue.extend([entry("y", entry_id="b"), entry("z", entry_id="c")]) == 2
    assert queue.extend([]) == 0
    assert queue.extend(entry(i, entry_id=f"g{i}") for i in range(3)) == 3
    assert [e.entry_id for e in queue.get_entries()] == ["a", "b", "c", "g0", "g1", "g2"]
    with pytest.raises(InvalidTypeError):
        queue.extend([{"item": 1}])  # type: ignore[list-item]
    replacement = dataclasses.replace(first, retry_count=9)
    queue.add_entry(replacement)  # the same id replaces in place
    assert queue.get_entries()[0].retry_count == 9
    assert len(queue) == 6


def test_size_len_and_clear():
    queue = memory_queue()
    assert queue.size() == len(queue) == 0
    for i in range(7):
        queue.add(i, ERR)
    assert queue.size() == len(queue) == 7
    assert queue.clear() == 7
    assert queue.size() == 0
    assert queue.clear() == 0
    assert "0 entries" in repr(queue)


# -- summary --------------------------------------------------------------------------


def test_summary_of_an_empty_queue():
    summary = memory_queue().get_summary()
    assert set(summary) >= SUMMARY_KEYS
    assert summary["total_entries"] == 0
    assert summary["error_types"] == {}
    assert summary["avg_retry_count"] == 0.0
    assert summary["oldest_timestamp"] is None and summary["newest_timestamp"] is None
    assert summary["top_messages"] == []
    assert summary["pruned"] == 0 and summary["persist_errors"] == 0


def test_summary_counts():
    queue = memory_queue()
    queue.add(1, ValueError("bad"), retry_count=1)
    queue.add(2, ValueError("bad"), retry_count=3)
    queue.add(3, TransientError("flaky"), retry_count=2)
    queue.add(4, TimeoutError("slow"), reason="timeout")
    summary = queue.get_summary()
    assert summary["total_entries"] == 4
    assert summary["error_types"] == {"ValueError": 2, "TransientError": 1, "TimeoutError": 1}
    assert summary["reasons"] == {"exception": 3, "timeout": 1}
    assert summary["avg_retry_count"] == pytest.approx(1.5)
    stamps = [e.timestamp for e in queue.get_entries()]
    assert summary["oldest_timestamp"] == min(stamps)
    assert summary["newest_timestamp"] == max(stamps)
    assert summary["top_messages"][0] == ("bad", 2)


# -- filter ---------------------------------------------------------------------------


def test_filter():
    queue = memory_queue()
    queue.extend([
        entry(1, "ValueError", timestamp=100.0, error_qualname="ValueError", entry_id="a"),
        entry(2, "TransientError", timestamp=200.0, error_qualname="app.TransientError", entry_id="b"),
        entry(3, "TimeoutError", timestamp=300.0, reason="timeout", entry_id="c"),
        entry(4, "ValueError", timestamp=400.0, retry_count=5, entry_id="d"),
    ])

    def ids(entries):
        return [e.entry_id for e in entries]

    assert ids(queue.filter()) == ["a", "b", "c", "d"]
    assert ids(queue.filter(error_type="ValueError")) == ["a", "d"]
    assert ids(queue.filter(error_type="app.TransientError")) == ["b"]
    assert ids(queue.filter(error_type="TransientError")) == ["b"]
    assert ids(queue.filter(reason="timeout")) == ["c"]
    assert ids(queue.filter(since=200.0)) == ["b", "c", "d"]  # inclusive
    assert ids(queue.filter(until=200.0)) == ["a", "b"]
    assert ids(queue.filter(since=150, until=350)) == ["b", "c"]
    as_datetime = datetime.datetime.fromtimestamp(300.0)
    assert ids(queue.filter(since=as_datetime)) == ["c", "d"]
    assert ids(queue.filter(predicate=lambda e: e.retry_count > 1)) == ["d"]
    assert ids(queue.filter(error_type="ValueError", since=150)) == ["d"]
    assert queue.filter(error_type="Nope") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"reason": "bored"}, "reason"), ({"since": "yesterday"}, "since"), ({"until": True}, "until"),
     ({"predicate": 3}, "predicate")],
)
def test_filter_rejects_bad_arguments(kwargs, field):
    with pytest.raises(InvalidArgumentError, match=f"{field}="):
        memory_queue().filter(**kwargs)


# -- remove and update ------------------------------------------------------------------


def test_remove():
    queue = memory_queue()
    entries = [queue.add(i, ERR) for i in range(5)]
    assert queue.remove([entries[1].entry_id, entries[3].entry_id, "unknown"]) == 2
    assert [e.item for e in queue.get_entries()] == [0, 2, 4]
    assert queue.remove([]) == 0
    with pytest.raises(InvalidArgumentError, match="remove_ids="):
        queue.remove(entries[0].entry_id)  # a bare str is a mistake, not 32 one-letter ids


def test_update_replaces_in_place_adds_new_and_removes():
    queue = memory_queue()
    a, b, _c = (queue.add(i, ERR) for i in "abc")
    newer = dataclasses.replace(b, retry_count=4, error_message="again")
    extra = entry("d", entry_id="zz")
    assert queue.update([newer, extra], remove_ids=[a.entry_id]) == 1
    assert [(e.item, e.retry_count) for e in queue.get_entries()] == [("b", 4), ("c", 0), ("d", 0)]
    assert queue.update() == 0


# -- limits -------------------------------------------------------------------------------


def test_max_entries_drops_the_oldest_counts_and_logs(caplog):
    queue = memory_queue(max_entries=3)
    with caplog.at_level(logging.INFO, logger="amorsize.dlq"):
        for i in range(5):
            queue.add(i, ERR)
    assert [e.item for e in queue.get_entries()] == [2, 3, 4]
    assert queue.get_summary()["pruned"] == 2
    assert "max_entries=3" in caplog.text
    queue.extend([entry(i, entry_id=f"x{i}") for i in range(10)])
    assert len(queue) == 3
    assert queue.get_summary()["pruned"] == 12


def test_max_entries_zero_is_unbounded():
    queue = memory_queue(max_entries=0)
    queue.extend(entry(i, entry_id=f"e{i:05d}") for i in range(20000))
    assert len(queue) == 20000
    assert queue.get_summary()["pruned"] == 0


def test_pruning_an_in_memory_queue_does_not_grow_memory():
    """Pruned ids were remembered for a journal compaction that never comes without a journal."""
    queue = memory_queue(max_entries=10)
    for i in range(2000):
        queue.add(i, ERR)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20000):
            queue.add(i, ERR)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(queue) == 10
    assert queue.get_summary()["pruned"] == 21990
    assert grown < 200_000, f"memory grew by {grown} bytes while the queue stayed at 10 entries"


def test_reloading_the_journal_does_not_bring_back_pruned_entries(tmp_path):
    """Pruned records leave the file in batches; load() must not re-add them as the newest."""
    queue = DeadLetterQueue(DLQPolicy(directory=tmp_path, max_entries=5))
    for i in range(10):
        queue.add(i, ERR)
    assert queue.load() == 5
    assert [e.item for e in queue.get_entries()] == [5, 6, 7, 8, 9]
    assert queue.get_summary()["pruned"] == 5
    queue.close()


# -- threads ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("persist", [False, True], ids=["memory", "journal"])
def test_threads_adding_reading_and_removing_concurrently(tmp_path, persist):
    queue = DeadLetterQueue(DLQPolicy(directory=tmp_path, auto_persist=persist, max_entries=0,
                                      fsync="never"))
    writers, per_writer = 4, 300
    errors: list = []
    removed: list = []
    stop = threading.Event()

    def write(w: int) -> None:
        try:
            for i in range(per_writer):
                queue.add((w, i), ERR, metadata={"w": w})
                if i % 50 == 0:
                    queue.extend([entry(("x", w, i), entry_id=f"x-{w}-{i}")])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def churn() -> None:
        try:
            while not stop.is_set():
                queue.get_summary()
                queue.filter(error_type="ValueError")
                victims = [e.entry_id for e in queue.get_entries() if e.entry_id.startswith("x-")][:2]
                queue.remove(victims)
                removed.extend(victims)
                time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader = threading.Thread(target=churn)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stop.set()
    reader.join(30)
    assert not errors
    items = [e.item for e in queue.get_entries()]
    plain = sorted(i for i in items if isinstance(i, tuple) and i[0] != "x")
    assert plain == sorted((w, i) for w in range(writers) for i in range(per_writer))
    ids = {e.entry_id for e in queue.get_entries()}
    assert len(ids) == len(items)
    assert not ids & set(removed)
    if persist:
        queue.close()
        reopened = DeadLetterQueue(DLQPolicy(directory=tmp_path, max_entries=0, allow_pickle=True))
        assert reopened.get_entries() == queue.get_entries()
        reopened.close()
