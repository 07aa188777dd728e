"""Issue 12, "Why" 3: an item that cannot be sent to a worker is dead-lettered; the run goes on.

Today an item holding a ``threading.Lock`` makes ``execute()`` raise
``TypeError: cannot pickle '_thread.lock' object`` with no results and no DLQ
entry. Target: reason ``unpicklable_item``, the item's repr and the pickling
error kept, every other item run.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict

import pytest
from fault_probes import double
from fault_support import (
    ProcessTag,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
)

from amorsize import DeadLetterQueue, DLQPolicy, UnserializableItem, execute, is_failure

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leaked_children")]

LOCKED = (3, 6)


def items_with_locks() -> list:
    return [threading.Lock() if i in LOCKED else i for i in range(10)]


def item_text(item: Any) -> str:
    """What the DLQ kept of the item: the object itself or its stand-in's repr."""
    return item.repr if isinstance(item, UnserializableItem) else repr(item)


@pytest.mark.parametrize(
    "options", [{}, {"n_jobs": 2, "chunksize": 4}], ids=["default", "n_jobs=2"]
)
def test_an_item_that_cannot_be_pickled_is_dead_lettered(
    tmp_path: Path, start_method: str, options: Dict[str, Any], process_tag: ProcessTag
) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    results = execute(double, items_with_locks(), dlq=dlq, start_method=start_method, **options)

    assert len(results) == 10
    for i, value in enumerate(results):
        if i in LOCKED:
            assert is_failure(value) and value.reason == "unpicklable_item", (i, value)
        else:
            assert value == i * 2, (i, value)
    for queue in (dlq, DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))):  # live, then disk
        entries = queue.get_entries()
        assert len(entries) == len(LOCKED)
        by_id = {e.entry_id: e for e in entries}
        for i in LOCKED:
            entry = by_id[results[i].entry_id]
            assert entry.reason == "unpicklable_item"
            assert "_thread.lock" in item_text(entry.item), entry.item
            assert "pickle" in entry.error_message and "_thread.lock" in entry.error_message, (
                entry.error_message
            )
            assert entry.metadata.get("index") == i
