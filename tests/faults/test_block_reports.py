"""A crash inside a block of tiny items is blamed on its item alone.

For tiny items a process worker reports its position once per block of
``ChunkTask.report_every`` items, not per item. The dispatcher must then run the
block again with per-item reports, so exactly the crashing item is dead-lettered
as ``worker_crash``, every other item gets its own result, and no item is lost.
"""

from __future__ import annotations

import functools
from typing import Any, List

import pytest
from fault_probes import exit_at

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure
from amorsize.backends import ChunkLost
from amorsize.run.dispatch import Dispatcher

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaked_children")]

N_ITEMS = 40_000
BAD = frozenset({23_456, 31_000})


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_crash_in_a_block_blames_only_its_item(start_method: str, monkeypatch: Any) -> None:
    lost: List[ChunkLost] = []
    original = Dispatcher._lost

    def spy(self: Dispatcher, event: ChunkLost) -> Any:
        lost.append(event)
        return original(self, event)

    monkeypatch.setattr(Dispatcher, "_lost", spy)
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    results = execute(functools.partial(exit_at, bad=BAD), range(N_ITEMS), n_jobs=2, dlq=dlq,
                      start_method=start_method)
    assert len(results) == N_ITEMS
    wrong = [i for i, r in enumerate(results) if i not in BAD and r != i + 1]
    assert wrong == []
    assert all(is_failure(results[i]) for i in BAD)
    entries = dlq.get_entries()
    assert sorted(e.item for e in entries) == sorted(BAD)
    assert {e.reason for e in entries} == {"worker_crash"}
    # The path under test ran: a crash reported within a block, then within one item.
    assert any(e.task.report_every > 1 for e in lost), [e.task.report_every for e in lost]
    assert sum(e.task.report_every == 1 for e in lost) >= len(BAD)
