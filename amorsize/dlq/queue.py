"""DeadLetterQueue: the in-process, thread-safe dead letter queue.

Memory and disk agree: with ``auto_persist`` every add is appended to the
journal (see :mod:`amorsize.dlq.journal`) before ``add()`` returns, and a queue
opened on a directory that holds a journal starts with its entries.

A persistence failure never goes untold: the entry stays in memory and is
written with the next append that succeeds; meanwhile ``healthy`` is False,
``get_summary()["unpersisted"]`` counts such entries and one WARNING per streak
says so (or ``add()`` raises, with ``on_persist_error="raise"``). ``flush()`` and
``close()`` raise :class:`~amorsize.DLQPersistError` naming a rescue file
(:mod:`amorsize.dlq.rescue`) if entries remain unwritten.

Pruning at ``max_entries`` moves the oldest entries to the archive
``dlq.pruned.jsonl`` (in batches, with the journal compaction), never deletes them.

Several queues on one directory (threads or processes) never corrupt the
journal or drop each other's appends; each queue's memory holds what it loaded
plus what it added, and ``load()`` picks up what others appended since.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, Dict, List, Sequence, Set

from amorsize._fs import write_atomically
from amorsize.dlq.alerts import AlertCallback, make_alerter
from amorsize.dlq.base import DeadLetterQueueBase, PathArg, checked_policy
from amorsize.dlq.dedupe import KeyFunction, dedupe_for
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.journal import Journal
from amorsize.dlq.migrate import migrate_on_open
from amorsize.dlq.policy import DLQFormat, DLQPolicy
from amorsize.dlq.pruning import PRUNE_COMPACTION_MIN_BATCH, PruningMixin
from amorsize.dlq.records import NotConverted, decode_record, encode_entry, read_records
from amorsize.dlq.rescue import persist_error
from amorsize.dlq.retention import RetentionLog
from amorsize.dlq.summary import select_entries, summarize
from amorsize.errors import DLQCorruptError, DLQPersistError

logger = logging.getLogger("amorsize.dlq")



class DeadLetterQueue(PruningMixin, DeadLetterQueueBase):
    """Keeps items that failed for good, with their errors, for inspection and replay.

    Args:
        policy: a :class:`DLQPolicy`; defaults to ``DLQPolicy()``.
        on_add: ``callable(entry, count)`` called after each add, outside the lock;
            its errors are logged, never raised (see :mod:`amorsize.dlq.alerts`).
        alert_every_seconds: at most one ``on_add`` call per interval, carrying the
            count of entries added since the previous call.
        key: with ``policy.dedupe``, ``callable(item)`` naming the item a failure
            belongs to (default: a hash of its canonical encoding; see
            :mod:`amorsize.dlq.dedupe`).
    """

    def __init__(
        self, policy: DLQPolicy | str | os.PathLike[str] | None = None, *,
        on_add: AlertCallback | None = None, alert_every_seconds: float | None = None,
        key: KeyFunction | None = None, _lazy_pickle: bool = False, _migrate: bool = True,
    ) -> None:
        if isinstance(policy, (str, os.PathLike)):  # a path: shorthand for a queue in that directory
            policy = DLQPolicy(directory=os.fspath(policy))
        self.policy = policy = checked_policy(policy)
        self._alerter = make_alerter(on_add, alert_every_seconds)
        self._deduper = dedupe_for(policy, key)
        self._retention_log = RetentionLog(policy.path, policy.max_age_seconds or 0.0)
        self._lock = threading.RLock()
        self._entries: collections.OrderedDict[str, DLQEntry] = collections.OrderedDict()
        self._pruned = 0
        # Ids gone from memory that may still be on disk: pruned ones (compacted in
        # batches) and removed ones whose compaction failed. The next compaction drops them.
        self._dropped_on_disk: Set[str] = set()
        self._prune_compaction_at = max(policy.max_entries, PRUNE_COMPACTION_MIN_BATCH)
        # A compaction that failed on I/O is retried after the next successful append,
        # then, if it fails again, only every PRUNE_COMPACTION_MIN_BATCH appends.
        self._compaction_pending = False
        self._compaction_retry_in = 0
        self._persist_errors = 0
        self._corrupt_skipped = 0
        self._unpersisted: Dict[str, None] = {}
        self._failing = False  # in a streak of persistence failures (one WARNING per streak)
        # Pruned entries waiting to be archived (with the next compaction), and the archive's size.
        self._to_archive: Dict[str, bytes] = {}
        self._to_archive_bytes = 0
        self._archive_bytes = 0
        self._prune_warned = self._archive_full_warned = False
        self._journal: Journal | None = None
        self._pickle_everything = policy.format is DLQFormat.PICKLE
        # The manager process of a SharedDeadLetterQueue keeps pickled items as bytes.
        self._lazy_pickle = _lazy_pickle
        if policy.auto_persist:
            if _migrate:  # a seed-era dlq.json / dlq.pkl moves into the journal, once
                migrate_on_open(policy.path, allow_pickle=bool(policy.allow_pickle),
                                pickle_everything=self._pickle_everything, fsync=policy.fsync)
            self._journal = Journal(policy.path, fsync=policy.fsync, strict=policy.strict)
            self._journal.prepare()
            self._archive_bytes = self._journal.archive_size()
            if os.path.exists(self._journal.path):
                self._merge_from(self._journal.path)

    # -- adding ---------------------------------------------------------------

    def _store(self, batch: Sequence[DLQEntry]) -> None:
        # The hot path of add(): no call that has nothing to do.
        with self._lock:
            if self._deduper is not None:
                batch = self._deduper.fold(batch, self._entries)
            for entry in batch:
                self._entries[entry.entry_id] = entry
            if self._journal is not None:
                self._persist([e.entry_id for e in batch])
            if self.policy.max_entries or self.policy.max_age_seconds is not None:
                self._prune()
        if self._alerter is not None:  # outside the lock: a slow callback blocks no writer
            self._alerter.notify(batch)

    # -- persistence ----------------------------------------------------------

    def _encode(self, entry: DLQEntry) -> bytes:
        return encode_entry(entry, pickle_everything=self._pickle_everything)

    def _persist(self, entry_ids: List[str], *, tell: bool = True) -> None:
        if self._journal is None:
            return
        backlog = list(self._unpersisted)
        ids = backlog + entry_ids if backlog else entry_ids
        lines = [self._encode(self._entries[i]) for i in ids if i in self._entries]
        if not lines:
            return
        try:
            self._journal.append(lines)
        except OSError as exc:
            for i in entry_ids:
                self._unpersisted[i] = None
            self._persist_failed("append", exc)
            if tell and self.policy.on_persist_error == "raise":
                raise DLQPersistError(
                    f"DLQ append to {self.policy.path} failed ({type(exc).__name__}: {exc}); "
                    f"{len(self._unpersisted)} entries are only in memory (on_persist_error='raise')"
                ) from exc
        else:
            self._unpersisted.clear()
            self._recovered()
            if self._compaction_pending:
                self._compaction_retry_in -= 1
                if self._compaction_retry_in <= 0:
                    self._compact(set(), retry=True)

    @property
    def healthy(self) -> bool:
        """False while an acknowledged entry is only in memory (its write failed)."""
        return not self._unpersisted

    def _persist_failed(self, what: str, exc: BaseException) -> None:
        # One WARNING per streak of failures (a full disk fails every add), with counts.
        self._persist_errors += 1
        log = logger.debug if self._failing else logger.warning
        self._failing = True
        log(
            "DLQ %s to %r failed (%s: %s); %d entries are only in memory (the queue is "
            "unhealthy) and are written with the next append that succeeds; further "
            "failures of this streak are logged at DEBUG",
            what, self.policy.path, type(exc).__name__, exc, len(self._unpersisted),
        )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("DLQ %r: writes succeed again after %d failed attempts so far; "
                           "the backlog is on disk", self.policy.path, self._persist_errors)

    def _compact(
        self,
        drop_ids: Set[str],
        replace: List[DLQEntry] | None = None,
        *,
        raise_errors: bool = False,
        retry: bool = False,
    ) -> None:
        """Rewrite the journal without ``drop_ids``; never raises unless ``raise_errors``.

        On failure nothing is forgotten: the dropped ids wait for the next
        compaction, the replaced entries are re-appended with the next append (a later
        line wins), and after an I/O error the compaction is retried after the next
        append that succeeds.
        """
        if self._journal is None:
            return
        replace = replace or []
        replace_lines = {e.entry_id: self._encode(e) for e in replace}
        add = [self._encode(self._entries[i]) for i in self._unpersisted if i in self._entries]
        archive = list(self._to_archive.values())
        try:
            self._journal.compact(drop_ids | self._dropped_on_disk, replace_lines, add, archive)
        except (OSError, DLQCorruptError) as exc:
            self._dropped_on_disk |= drop_ids
            for entry in replace:
                if entry.entry_id in self._entries:
                    self._unpersisted[entry.entry_id] = None
            # A corrupt file stays corrupt until someone repairs it: do not re-read it
            # after appends, only at the next compaction that is asked for.
            self._compaction_pending = isinstance(exc, OSError)
            self._compaction_retry_in = PRUNE_COMPACTION_MIN_BATCH if retry else 1
            self._persist_failed("compaction", exc)
            if raise_errors:
                raise
        else:
            self._dropped_on_disk.clear()
            self._unpersisted.clear()
            self._archive_bytes += sum(len(line) for line in archive)
            self._to_archive.clear()
            self._to_archive_bytes = 0
            self._recovered()
            self._compaction_pending = False
            self._prune_compaction_at = max(self.policy.max_entries, PRUNE_COMPACTION_MIN_BATCH)

    def save(self, path: PathArg = None) -> str:
        """Write every entry to ``path`` atomically (default: the journal). Returns the path.

        Raises:
            OSError: the file could not be written (the entries stay in memory).
            DLQCorruptError: saving to the journal, which is corrupt (policy.strict).
        """
        with self._lock:
            if path is None and self._journal is not None:
                self._compact(set(), raise_errors=True)
                self._journal.sync()
                return self._journal.path
            target = os.fspath(path) if path is not None else os.path.join(
                self.policy.path, "dlq.jsonl"
            )
            write_atomically(target, [self._encode(e) for e in self._entries.values()])
            return target

    def load(self, path: PathArg = None) -> int:
        """Merge the entries stored at ``path`` (default: the journal) into this queue.

        Entries already present (same ``entry_id``) are updated in place; the others
        are appended. Returns the number of entries read from the file.

        Raises:
            DLQFileNotFoundError: there is no file at ``path`` ("DLQ file not found").
            DLQCorruptError: a record before the last line is unreadable (policy.strict).
        """
        default = self._journal.path if self._journal else os.path.join(self.policy.path, "dlq.jsonl")
        target = os.fspath(path) if path is not None else default
        with self._lock:
            loaded = self._merge_from(target)
            if self._journal is not None and os.path.abspath(target) != os.path.abspath(
                self._journal.path
            ):
                self._persist(loaded)
            self._prune()
            return len(loaded)

    def _merge_from(self, path: str) -> List[str]:
        allow_pickle, lazy = bool(self.policy.allow_pickle), self._lazy_pickle
        # Decoded as read, so the parsed dicts of the whole file are never held at once.
        result = read_records(path, strict=self.policy.strict, convert=lambda record: decode_record(
            record, allow_pickle=allow_pickle, lazy=lazy))
        decoded = []
        skipped = result.corrupt_skipped
        for number, entry in zip(result.numbers, result.records):
            if isinstance(entry, NotConverted):  # a well-formed line that is not a readable entry
                exc = entry.error
                detail = f"the record cannot be decoded ({type(exc).__name__}: {exc})"
                if self.policy.strict:
                    raise DLQCorruptError(path, number, detail) from exc
                skipped += 1
                logger.warning("DLQ file %r: skipped record at line %d: %s", path, number, detail)
                continue
            decoded.append(entry)
        # Nothing is merged before the whole file has been read and decoded.
        self._corrupt_skipped += skipped
        if self._deduper is not None:
            self._deduper.forget()
        ids = []
        own_journal = self._journal is not None and os.path.abspath(path) == os.path.abspath(
            self._journal.path
        )
        for entry in decoded:
            if own_journal and entry.entry_id in self._dropped_on_disk:
                continue  # pruned or removed here, still on file until the next compaction
            self._entries[entry.entry_id] = entry
            ids.append(entry.entry_id)
        if self.policy.max_age_seconds is not None or (
            self.policy.max_entries and len(self._entries) > self.policy.max_entries
        ):
            self._prune(full_age_scan=True)
        return ids

    def _catch_up(self) -> None:
        # Write what a failed append or compaction left behind, if the disk lets us now,
        # and archive the pruned batch so memory and disk hold the same live entries.
        if self._compaction_pending or self._to_archive or self._dropped_on_disk:
            self._compact(set(), retry=True)
        if self._unpersisted:
            self._persist([], tell=False)
        if self._unpersisted:
            lines = [self._encode(self._entries[i]) for i in self._unpersisted if i in self._entries]
            raise persist_error(lines, self.policy.path, "the last write failed; see the WARNING")

    def flush(self) -> None:
        """Make every add durable on disk now (fsync), whatever the fsync policy.

        Raises:
            DLQPersistError: entries could not be written; they were saved to the
                rescue file the message names (and stay in memory).
        """
        with self._lock:
            if self._journal is not None:
                self._catch_up()
                self._journal.sync()

    def close(self) -> None:
        """Flush and release file handles. The queue stays usable (files reopen on demand).

        Raises:
            DLQPersistError: as :meth:`flush` (the handles are released all the same).
        """
        if self._alerter is not None:
            self._alerter.flush()
        with self._lock:
            if self._journal is not None:
                try:
                    self._catch_up()
                finally:
                    self._journal.close()

    # -- reading --------------------------------------------------------------

    def get_entries(self) -> List[DLQEntry]:
        """A copy of the entries, in insertion order."""
        with self._lock:
            return list(self._entries.values())

    def size(self) -> int:
        """How many entries the queue holds."""
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DeadLetterQueue({len(self)} entries, directory={self.policy.path!r})"

    def _select(
        self, error_type: str | None, reason: str | None, since: float | None,
        until: float | None,
    ) -> List[DLQEntry]:
        return select_entries(self.get_entries(), error_type, reason, since, until)

    def get_summary(self) -> Dict[str, Any]:
        """Counts by error type and reason, retry average, time span, top messages and health."""
        summary = summarize(
            self.get_entries(), pruned=self._pruned, persist_errors=self._persist_errors,
            corrupt_skipped=self._corrupt_skipped,
        )
        summary["unpersisted"] = len(self._unpersisted)
        summary["healthy"] = not self._unpersisted
        summary["archived_bytes"] = self._archive_bytes
        return summary

    # -- removing -------------------------------------------------------------

    def clear(self) -> int:
        """Remove every entry (and compact the journal). Returns how many were removed."""
        with self._lock:
            ids = set(self._entries)
            self._entries.clear()
            self._unpersisted.clear()
            self._compact(ids)
            return len(ids)

    def _update(self, entries: List[DLQEntry], remove_ids: List[str]) -> int:
        with self._lock:
            removed = {i for i in remove_ids if self._entries.pop(i, None) is not None}
            for i in removed:
                self._unpersisted.pop(i, None)
            for entry in entries:
                self._entries[entry.entry_id] = entry
            if removed or entries:
                self._compact(removed, entries)
            return len(removed)
