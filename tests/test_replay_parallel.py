"""replay_failed_items through execute(): worker processes, retry, crash isolation."""

from __future__ import annotations

import os

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, RetryPolicy, replay_failed_items


def _fixed(x):
    if x == 4:
        os._exit(7)  # still poisonous after the fix: costs this item only
    if x % 3 == 0:
        raise KeyError(x)
    return x * 10


@pytest.mark.timeout(60)
def test_parallel_replay_updates_queue(tmp_path, no_leaked_children):
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    for i in range(12):
        dlq.add(i, ValueError(f"first failure {i}"), retry_count=2)
    added_ids = [e.entry_id for e in dlq.get_entries()]
    results, still = replay_failed_items(
        dlq, _fixed, n_jobs=2, retry=RetryPolicy(max_retries=1, initial_delay=0)
    )
    assert results == [x * 10 for x in range(12) if x % 3 and x != 4]
    by_item = {e.item: e for e in still}
    assert sorted(by_item) == [0, 3, 4, 6, 9]
    assert by_item[3].error_type == "KeyError" and by_item[3].retry_count == 3
    assert by_item[4].reason == "worker_crash" and by_item[4].error_type == "WorkerCrashedError"
    # the queue kept exactly the still-failing entries, under their original ids
    reopened = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    assert sorted(e.item for e in reopened.get_entries()) == [0, 3, 4, 6, 9]
    assert {e.entry_id for e in reopened.get_entries()} <= set(added_ids)
