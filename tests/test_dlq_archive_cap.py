"""max_archive_bytes: pruning stops where the archive would pass its cap, counted across compactions."""

from __future__ import annotations

import logging
import os

from amorsize import DeadLetterQueue, DLQPolicy
from amorsize.dlq.records import encode_entry


def test_pruning_stops_at_the_archive_cap_across_compactions(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="amorsize.dlq")
    probe = DeadLetterQueue(DLQPolicy(directory=tmp_path / "probe", auto_persist=False))
    size = len(encode_entry(probe.add("item-0000", ValueError("x")), pickle_everything=False))
    policy = DLQPolicy(directory=tmp_path / "q", max_entries=2, max_archive_bytes=5 * size + size // 2)
    queue = DeadLetterQueue(policy)
    for i in range(4):
        queue.add(f"item-{i:04d}", ValueError("x"))
    queue.flush()  # archives the two pruned entries (a compaction)
    archive = os.path.join(policy.path, "dlq.pruned.jsonl")
    assert abs(os.path.getsize(archive) - 2 * size) < size // 4
    for i in range(4, 12):
        queue.add(f"item-{i:04d}", ValueError("x"))
    # Three more fit under the cap (5 archived in all); the rest stay live, with a warning.
    assert queue.get_summary()["pruned"] == 5 and len(queue) == 7
    assert queue.get_entries()[0].item == "item-0005"
    assert "at its cap" in caplog.text
    queue.flush()
    assert abs(os.path.getsize(archive) - 5 * size) < size // 4
    queue.close()
