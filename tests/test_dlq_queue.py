"""DeadLetterQueue in memory: add, read, filter, summary, remove, limits, threads."""

from __future__ import annotations

import gc
import tracemalloc

from amorsize import DeadLetterQueue, DLQPolicy

ERR = ValueError("boom")


def memory_queue(**kw) -> DeadLetterQueue:
    kw.setdefault("max_entries", 0)
    return DeadLetterQueue(DLQPolicy(auto_persist=False, **kw))


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
