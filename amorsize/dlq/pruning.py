"""Pruning at ``max_entries``: the oldest entries move to the archive, never vanish.

Entries leave memory at once and the journal in batches (with its compaction), so
pruning stays O(1) per add. The archive ``dlq.pruned.jsonl`` has its own cap
(``max_archive_bytes``): at the cap pruning stops, with one WARNING, and entries
over ``max_entries`` stay live.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Set

if TYPE_CHECKING:
    from amorsize.dlq.entry import DLQEntry
    from amorsize.dlq.journal import Journal
    from amorsize.dlq.policy import DLQPolicy

logger = logging.getLogger("amorsize.dlq")

#: Pruned entries are dropped from memory at once but from the journal in
#: batches, so pruning stays O(1) per add: compact once this many (or
#: ``max_entries``, if larger) pruned records have built up on disk.
PRUNE_COMPACTION_MIN_BATCH = 256


class PruningToArchive:
    """What :class:`~amorsize.dlq.queue.DeadLetterQueue` does at ``max_entries``."""

    policy: DLQPolicy
    _entries: Dict[str, DLQEntry]
    _journal: Journal | None
    _pruned: int
    _prune_warned: bool
    _archive_full_warned: bool
    _archive_bytes: int
    _to_archive: Dict[str, bytes]
    _dropped_on_disk: Set[str]
    _unpersisted: Dict[str, Any]
    _prune_compaction_at: int

    def _encode(self, entry: DLQEntry) -> bytes:
        raise NotImplementedError

    def _compact(self, drop_ids: Set[str]) -> None:
        raise NotImplementedError

    def _prune(self) -> None:
        limit = self.policy.max_entries
        if not limit or len(self._entries) <= limit:
            return
        dropped = self._move_to_archive(len(self._entries) - limit)
        if not dropped:
            return
        self._pruned += dropped
        where = "the archive " + self._journal.archive_path if self._journal else "nowhere (no journal)"
        log = logger.info if self._prune_warned else logger.warning
        self._prune_warned = True
        log("DLQ at max_entries=%d: moved %d oldest entries to %s (%d so far); "
            "`amorsize dlq list --archived` shows them", limit, dropped, where, self._pruned)
        if len(self._dropped_on_disk) >= self._prune_compaction_at:
            self._compact(set())
            # Next time after another batch, also when this one failed (no re-read per add).
            self._prune_compaction_at = len(self._dropped_on_disk) + max(
                limit, PRUNE_COMPACTION_MIN_BATCH
            )

    def _move_to_archive(self, count: int) -> int:
        """Take the ``count`` oldest entries out of memory, into the archive batch."""
        cap = self.policy.max_archive_bytes
        journal = self._journal
        moved = 0
        while moved < count:
            entry_id, entry = next(iter(self._entries.items()))
            if journal is not None:
                line = self._encode(entry)
                pending = self._archive_bytes + sum(map(len, self._to_archive.values()))
                if cap and pending + len(line) > cap:
                    if not self._archive_full_warned:
                        self._archive_full_warned = True
                        logger.warning(
                            "DLQ archive %s is at its cap (%d of max_archive_bytes=%d): pruning "
                            "stopped, entries over max_entries stay live; move it away or raise "
                            "the cap", journal.archive_path, pending, cap)
                    break
                self._to_archive[entry_id] = line
                self._dropped_on_disk.add(entry_id)
                self._unpersisted.pop(entry_id, None)
            del self._entries[entry_id]
            moved += 1
        return moved
