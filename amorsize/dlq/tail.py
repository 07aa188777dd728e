"""The shared queue's manager reads what workers appended to its journal (issue 18).

A ``capture()`` hook appends its failure's line to the journal itself, under the
journal's lock, and returns: nothing is sent to the manager. The manager learns
the line by reading the journal from where it last stopped:

* at the start of each of its own journal operations (append, compaction), under
  the same exclusive lock, so a compaction never drops a line it has not seen, and
* before every call that reads the queue, and every :data:`TAIL_INTERVAL_SECONDS`
  (:meth:`TailedJournal.tail`, under the shared lock: writers wait, readers don't).

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
from typing import Callable, List, Tuple, TypeVar

from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.ingest import JournalLine
from amorsize.dlq.journal import Journal
from amorsize.dlq.records import record_id

logger = logging.getLogger("amorsize.dlq")
_T = TypeVar("_T")

#: Seconds between the manager's reads of its journal when nobody asks: keeps its
#: memory, pruning and alerts current on a long run with no reader.
TAIL_INTERVAL_SECONDS = 0.1
#: Bytes read at a time.
READ_BYTES = 1 << 20


class TailedJournal(Journal):
    """The manager's journal: hands the lines other processes appended to ``take``.

    ``take(lines, replaced)``: ``replaced`` when another process rewrote the file, so
    ``lines`` is all of it (``take`` keeps only ids it does not know).
    """

    def __init__(
        self, directory: str, *, fsync: str, strict: bool,
        take: Callable[[List[JournalLine], bool], None],
    ) -> None:
        super().__init__(directory, fsync=fsync, strict=strict)
        self._take = take
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
            data = _whole_lines(fd, offset)
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


def _whole_lines(fd: int, offset: int) -> bytes:
    """The bytes of ``fd`` from ``offset`` to the end of its last whole line."""
    pieces: List[bytes] = []
    while True:
        chunk = os.pread(fd, READ_BYTES, offset)
        if not chunk:
            break
        pieces.append(chunk)
        offset += len(chunk)
    data = b"".join(pieces)
    return data[:data.rfind(b"\n") + 1]


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
