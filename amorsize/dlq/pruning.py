"""Pruning a DeadLetterQueue: ``max_age_seconds`` and ``max_entries``, one path to the archive.

Both limits go through :meth:`PruningMixin._drop_pruned`: the entries leave memory
at once and move to the archive (``dlq.pruned.jsonl``, issue 13) with the next
batched compaction, so pruning stays O(1) per add. A mixin of
:class:`~amorsize.dlq.queue.DeadLetterQueue`, whose lock is held by every caller.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Dict, List, Set

from amorsize.dlq.retention import expired

logger = logging.getLogger("amorsize.dlq")

#: Pruned entries are dropped from memory at once but from the journal in
#: batches, so pruning stays O(1) per add: compact once this many (or
#: ``max_entries``, if larger) pruned records have built up on disk.
PRUNE_COMPACTION_MIN_BATCH = 256


class PruningMixin:
    """The pruning methods of DeadLetterQueue (its state lives on the queue)."""

    # Declared for type checkers; DeadLetterQueue.__init__ sets them.
    _entries: Any
    _journal: Any
    policy: Any
    _archive_bytes: int
    _archive_full_warned: bool
    _dropped_on_disk: Set[str]
    _prune_compaction_at: int
    _prune_warned: bool
    _pruned: int
    _retention_log: Any
    _to_archive: Dict[str, bytes]
    _to_archive_bytes: int
    _unpersisted: Dict[str, None]

    def _encode(self, entry: Any) -> bytes:
        raise NotImplementedError

    def _compact(self, drop_ids: Set[str]) -> None:
        raise NotImplementedError

    def _prune(self, *, full_age_scan: bool = False) -> None:
        """Apply ``max_age_seconds`` then ``max_entries``, both through :meth:`_drop_pruned`."""
        max_age = self.policy.max_age_seconds
        if max_age is not None and self._entries:
            ids = expired(self._entries, max_age, time.time(), oldest_only=not full_age_scan)
            if ids:
                self._retention_log.dropped(self._drop_pruned(ids))
        limit = self.policy.max_entries
        if not limit or len(self._entries) <= limit:
            return
        dropped = self._drop_pruned(list(itertools.islice(self._entries, len(self._entries) - limit)))
        if not dropped:
            return
        where = "the archive " + self._journal.archive_path if self._journal else "nowhere (no journal)"
        log = logger.info if self._prune_warned else logger.warning
        self._prune_warned = True
        log("DLQ at max_entries=%d: moved %d oldest entries to %s (%d so far); "
            "`amorsize dlq list --archived` shows them", limit, dropped, where, self._pruned)

    def _drop_pruned(self, entry_ids: List[str]) -> int:
        """THE prune path (max_entries and max_age_seconds): archive ``entry_ids``.

        They leave memory at once and move to the archive (``dlq.pruned.jsonl``) with
        the next batched compaction. Returns how many (counted in ``summary["pruned"]``).
        """
        dropped = self._move_to_archive(entry_ids)
        self._pruned += dropped
        if len(self._dropped_on_disk) >= self._prune_compaction_at:
            self._compact(set())
            # Next time after another batch, also when this one failed (no re-read per add).
            self._prune_compaction_at = len(self._dropped_on_disk) + max(
                self.policy.max_entries, PRUNE_COMPACTION_MIN_BATCH
            )
        return dropped

    def _move_to_archive(self, entry_ids: List[str]) -> int:
        """Take ``entry_ids`` out of memory, into the archive batch (stops at the cap)."""
        cap = self.policy.max_archive_bytes
        journal = self._journal
        moved = 0
        for entry_id in entry_ids:
            entry = self._entries.get(entry_id)
            if entry is None:
                continue
            if journal is not None:
                line = self._encode(entry)
                # A running total: summing the batch per entry cost O(batch) each (400 us
                # per pruned entry at max_entries=10,000).
                pending = self._archive_bytes + self._to_archive_bytes
                if cap and pending + len(line) > cap:
                    if not self._archive_full_warned:
                        self._archive_full_warned = True
                        logger.warning(
                            "DLQ archive %s is at its cap (%d of max_archive_bytes=%d): pruning "
                            "stopped, entries over max_entries stay live; move it away or raise "
                            "the cap", journal.archive_path, pending, cap)
                    break
                replaced = self._to_archive.get(entry_id)
                self._to_archive[entry_id] = line
                self._to_archive_bytes += len(line) - (len(replaced) if replaced else 0)
                self._dropped_on_disk.add(entry_id)
                self._unpersisted.pop(entry_id, None)
            del self._entries[entry_id]
            moved += 1
        return moved

