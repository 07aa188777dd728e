"""The shared queue's manager takes what others wrote: the workers' inbox, other writers' appends.

A ``capture()`` hook writes its failure's line to its own file in the manager's
inbox and returns (:mod:`amorsize.dlq.inbox`); nothing is sent to the manager.
The manager moves those lines into its journal (one append for all of them, ids
it holds or removed skipped) and takes them into memory, and it takes the lines
other processes appended to the journal itself:

* before every call that reads the queue, and every :data:`TAIL_INTERVAL_SECONDS`
  (:meth:`TailedJournal.tail`: the journal's new lines under the shared lock,
  writers wait, readers don't; then the inbox), and
* at the start of each of its own journal operations (append, compaction), under
  the exclusive lock, so a compaction never drops a line it has not seen; the inbox's
  offsets are saved before a compaction (an entry moved and removed never returns).

Only whole lines are taken (a torn tail waits for the next writer to cut or finish
it). At each unlock the position moves to the end of what the manager itself
wrote, so its own lines are never read back. If another process replaced the file
(a compaction of its own), the whole file is read again and only ids the manager
neither holds nor dropped are taken.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from typing import Callable, Dict, List, Sequence, Set, Tuple, TypeVar

from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.inbox import Inbox, whole_lines
from amorsize.dlq.ingest import JournalLine
from amorsize.dlq.journal import Journal
from amorsize.dlq.records import looks_encoded, record_id

logger = logging.getLogger("amorsize.dlq")
_T = TypeVar("_T")

#: Seconds between the manager's reads of its journal when nobody asks: keeps its
#: memory, pruning and alerts current on a long run with no reader.
TAIL_INTERVAL_SECONDS = 0.1


class TailedJournal(Journal):
    """The manager's journal: hands the lines other processes appended to ``take``.

    ``take(lines, replaced)``: ``replaced`` when another process rewrote the file, so
    ``lines`` is all of it (``take`` keeps only ids it does not know).
    """

    def __init__(
        self, directory: str, *, fsync: str, strict: bool,
        take: Callable[[List[JournalLine], bool], None], known: Callable[[str], bool],
    ) -> None:
        super().__init__(directory, fsync=fsync, strict=strict)
        self._take = take
        self._known = known
        self._inbox_failures = 0  # reads of the inbox that failed in a row (logged once)
        self._inbox_dropped = 0  # its lines that were not records (logged once, then DEBUG)
        try:
            self.inbox: Inbox | None = Inbox(directory)
        except OSError as exc:  # hooks then send their failures to the manager
            logger.warning("DLQ directory %r: no inbox for workers (%s: %s); their failures "
                           "reach the manager over its lane", directory, type(exc).__name__, exc)
            self.inbox = None
        self._tail_inode: int | None = None
        self._tail_offset = 0
        #: Lines of other writers were taken since the last :meth:`sync_others`.
        self.others_unsynced = False

    def start_at_end(self) -> None:
        """Everything in the file now is known (the queue just loaded it)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._tail_inode, self._tail_offset = None, 0
        else:
            self._tail_inode, self._tail_offset = info.st_ino, info.st_size

    def tail(self) -> None:
        """Take the lines other processes appended since the last read, then the inbox's."""
        self._tail_others()
        self.drain_inbox()

    def _tail_others(self) -> None:
        """Take the lines appended since the last read (writers wait meanwhile)."""
        try:
            info = os.stat(self.path)
        except OSError:  # no journal (yet, or any more): nothing to read
            return
        if (info.st_ino, info.st_size) == (self._tail_inode, self._tail_offset):
            return  # nothing new: no lock taken
        try:
            super()._lock(fcntl.LOCK_SH)  # the plain lock: the lines are parsed after it
        except OSError as exc:  # the readers' call goes on with what memory holds
            logger.warning("DLQ journal %r: could not lock it to read the workers' appends "
                           "(%s: %s)", self.path, type(exc).__name__, exc)
            return
        try:
            new = self._guarded(self._new_bytes)
        finally:
            self._unlock()
        # Writers wait only for the read: splitting and taking thousands of lines took
        # milliseconds, every TAIL_INTERVAL_SECONDS, with every worker's append blocked.
        # (The caller holds the queue's own lock, so no other journal operation of this
        # process runs in between.)
        self._take_new(new)

    def drain_inbox(self) -> None:
        """Journal (in one write) and take the lines workers wrote to the inbox since the last call.

        Lines the journal cannot take (a full disk) wait in the inbox, on disk, and are
        read again next time; lines it took are taken in even if the bookkeeping after
        (an fsync, the offsets) fails, and their workers' files stay until it works.
        """
        inbox = self.inbox
        if inbox is None:
            return
        try:
            fresh, unreadable = self._fresh_lines(inbox)
            if fresh:
                self.append([x.line for x in fresh])
        except OSError as exc:
            self._inbox_trouble(inbox, exc, "could not move the workers' lines into the journal; "
                                "they wait there")
            return
        try:
            if inbox.finishing() and self.fsync != "never":
                self.sync()  # in the journal on disk before the worker's file goes
            inbox.commit()
            if fresh:  # before anyone removes them (another process too): see amorsize.dlq.inbox
                inbox.save_offsets(durable=False)
            self._inbox_failures = 0
        except OSError as exc:
            self._inbox_trouble(inbox, exc, "moved the workers' lines but could not finish "
                                "(their files stay until it can)")
        if unreadable:  # not records (written there by something else): never journaled
            self._inbox_dropped += unreadable
            log = logger.warning if self._inbox_dropped == unreadable else logger.debug
            log("DLQ inbox %r: dropped %d line(s) that are not whole records (%d so far)",
                inbox.path, unreadable, self._inbox_dropped)
        if fresh:
            self._take(fresh, False)

    def _fresh_lines(self, inbox: Inbox) -> Tuple[List[JournalLine], int]:
        """The inbox's new lines with ids the queue neither holds nor removed, and how
        many were not records."""
        fresh, unreadable = [], 0
        for line in inbox.read():
            entry_id = record_id(line) if looks_encoded(line) else None
            if entry_id is None:
                unreadable += 1
            elif not self._known(entry_id):
                fresh.append(JournalLine(entry_id, line))
        return fresh, unreadable

    def _inbox_trouble(self, inbox: Inbox, exc: OSError, what: str) -> None:
        self._inbox_failures += 1  # logged once per streak, then at DEBUG
        log = logger.warning if self._inbox_failures == 1 else logger.debug
        log("DLQ inbox %r: %s (%s: %s)", inbox.path, what, type(exc).__name__, exc)

    def compact(self, drop_ids: Set[str], replace: Dict[str, bytes], add: List[bytes],
                archive: Sequence[bytes] = ()) -> None:
        if self.inbox is not None:
            self.inbox.save_offsets()  # so what it drops never comes back from the inbox
        super().compact(drop_ids, replace, add, archive)

    def close(self) -> None:
        """Journal what the inbox still holds, close it, then close the journal."""
        try:
            self.drain_inbox()
        finally:
            inbox, self.inbox = self.inbox, None
            try:
                if inbox is not None:
                    _close_inbox(inbox)
            finally:
                super().close()

    def _lock(self, mode: int) -> int:
        fd = super()._lock(mode)
        # The manager's own operations (append, compaction) take every line first.
        new = self._guarded(self._new_bytes)
        self._take_new(new)
        return fd

    def _take_new(self, new: Tuple[bytes, bool] | None) -> None:
        if new is not None:
            self._guarded(lambda: self._take_bytes(*new))

    def _guarded(self, read: Callable[[], _T]) -> _T | None:
        try:
            return read()
        except Exception as exc:  # never fail (nor keep the lock) over others' lines: they
            # stay in the journal, for the next queue that opens it
            logger.warning("DLQ journal %r: could not read the workers' appends (%s: %s)",
                           self.path, type(exc).__name__, exc)
            return None

    def sync_others(self) -> None:
        """fsync the lines other processes appended since the last call (flush, close)."""
        if not self.others_unsynced:
            return
        self.others_unsynced = False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # never a symlink
        except FileNotFoundError:
            return  # removed under us: nothing left to make durable
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _unlock(self) -> None:
        # What the manager wrote under this lock is its own: start after it next time.
        try:
            info = os.stat(self.path)
        except OSError:
            info = None
        if info is not None and info.st_ino != self._tail_inode:
            self._tail_inode, self._tail_offset = info.st_ino, info.st_size  # our compaction
        elif self._end is not None and self._end > self._tail_offset:
            self._tail_offset = self._end  # our append, at the end of a whole-line file
        super()._unlock()

    def _new_bytes(self) -> Tuple[bytes, bool] | None:
        """The whole lines appended since the last read (under the lock), and ``replaced``."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # never a symlink
        except FileNotFoundError:
            return None
        try:
            inode = os.fstat(fd).st_ino
            replaced = inode != self._tail_inode
            offset = 0 if replaced else self._tail_offset
            data = whole_lines(fd, offset)
        finally:
            os.close(fd)
        self._tail_inode, self._tail_offset = inode, offset + len(data)
        return (data, replaced) if data else None

    def _take_bytes(self, data: bytes, replaced: bool) -> None:
        lines = []
        for line in data.splitlines(keepends=True):
            entry_id = record_id(line) or _parsed_id(line)
            if entry_id is not None:
                lines.append(JournalLine(entry_id, line))
        if lines:
            self.others_unsynced = True
            self._take(lines, replaced)


def _close_inbox(inbox: Inbox) -> None:
    try:
        inbox.close()
    except OSError as exc:  # its lines are journaled; only the saved offsets are missing
        logger.warning("DLQ inbox %r: could not close it (%s: %s); the next queue to open the "
                       "directory skips the ids the journal holds", inbox.path, type(exc).__name__, exc)


def decoded(lines: List[JournalLine]) -> List[DLQEntry]:
    """The entries of ``lines``; an unreadable one is skipped with a WARNING (it stays on disk)."""
    out = []
    for line in lines:
        try:
            out.append(line.entry())
        except Exception as exc:
            logger.warning("DLQ journal: skipped the unreadable record of entry %s (%s: %s)",
                           line.entry_id, type(exc).__name__, exc)
    return out


def _parsed_id(line: bytes) -> str | None:
    try:
        entry_id = json.loads(line).get("entry_id")
    except (ValueError, AttributeError):
        return None  # not a record: the journal's own checks report it
    return entry_id if isinstance(entry_id, str) else None
