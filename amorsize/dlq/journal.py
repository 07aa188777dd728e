"""The append-only journal behind a persistent dead letter queue: the file handling.

One JSON record per line in ``<directory>/dlq.jsonl`` (encoded and decoded by
:mod:`amorsize.dlq.records`; this module only reads a record's id):

* **O(1) appends.** An add is one ``write(2)`` of one line to a file opened with
  ``O_APPEND``, so its cost does not depend on the queue's length and the line is
  in the kernel (safe from SIGKILL) before ``add()`` returns. ``fsync`` policy
  decides when it also reaches the disk.
* **Torn-tail recovery.** A crash mid-write leaves a partial last line. Loading
  skips it with a warning; the next append first cuts it off, so it never
  hides or corrupts anything written later. A bad line *before* the last one is
  real corruption: :class:`~amorsize.DLQCorruptError` names file and line.
* **Compaction by atomic replace.** Removal (clear, prune, remove, replay)
  rewrites the file: temp file, fsync, ``os.replace``, fsync of the directory.
* **Several writers.** Appends and compaction hold an exclusive ``flock`` on
  ``.dlq.lock`` (an append is one short write). Under it an appender checks that
  the file ends with a complete line, so a record torn by a writer that was
  killed or whose write failed (disk full) is cut before anything is appended
  behind it; an appender whose file was replaced reopens it; a forked child
  opens its own lock (flock locks are shared across fork). So queues in several
  threads or processes on one directory never corrupt the journal nor lose each
  other's appends. Compaction re-reads the file and only drops the ids it was
  asked to drop.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from typing import Dict, List, Sequence, Set

from amorsize._fs import (
    ensure_directory,
    open_nofollow,
    pread_all,
    private_directory,
    refuse_symlink,
    remove_stale_temp_files,
    truncate_quietly,
    write_all,
    write_atomically,
)
from amorsize.dlq.inbox import INBOX_PREFIX, adopt_orphans
from amorsize.dlq.policy import FSYNC_BATCH_INTERVAL_SECONDS
from amorsize.dlq.records import ReadResult, parse_line, read_records, record_id
from amorsize.errors import DLQFileNotFoundError, DLQStorageError

logger = logging.getLogger("amorsize.dlq")

JOURNAL_FILE_NAME = "dlq.jsonl"
LOCK_FILE_NAME = ".dlq.lock"
ARCHIVE_FILE_NAME = "dlq.pruned.jsonl"
#: Name pattern of a compaction's temp file (``write_atomically``): removed on open
#: when a killed compaction left one behind.
TEMP_PREFIX, TEMP_SUFFIX = ".dlq-", ".tmp"


class Journal:
    """The on-disk side of one queue. Not thread-safe: the queue's lock guards it."""

    def __init__(self, directory: str, *, fsync: str, strict: bool = True) -> None:
        self.directory = directory
        self.strict = strict
        self.path = os.path.join(directory, JOURNAL_FILE_NAME)
        self.lock_path = os.path.join(directory, LOCK_FILE_NAME)
        self.archive_path = os.path.join(directory, ARCHIVE_FILE_NAME)
        self._torn_cuts = 0  # logged at WARNING once per journal, then at DEBUG
        self._dropped_unreadable = 0  # unreadable lines compactions dropped (each one logged)
        self.fsync = fsync
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._inode: int | None = None
        # Where our last append ended; if the file still ends there, nobody wrote
        # since and its tail needs no check.
        self._end: int | None = None
        self._pid = os.getpid()
        self._last_sync = time.monotonic()
        self._dirty = False

    # -- file handles ---------------------------------------------------------

    def _lock(self, mode: int) -> int:
        if self._pid != os.getpid():
            self._forget_inherited_handles()
        if self._lock_fd is None:
            ensure_directory(self.directory)  # removed under a running queue: made again, 0700
            self._lock_fd = open_nofollow(
                self.lock_path, os.O_RDWR | os.O_CREAT, "DLQ lock file", DLQStorageError
            )
        fcntl.flock(self._lock_fd, mode)
        return self._lock_fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _forget_inherited_handles(self) -> None:
        # After fork the child shares the parent's open file descriptions, and flock
        # locks belong to the description: parent and child would not exclude each
        # other. Close the child's copies (that releases nothing the parent holds)
        # and let the child open its own.
        fds = (self._fd, self._lock_fd)
        self._fd = self._lock_fd = None
        self._inode = self._end = None
        self._dirty = False
        self._pid = os.getpid()
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def _reset_handles(self) -> None:
        """Close both handles so the next operation reopens (and re-creates) everything."""
        fds = (self._fd, self._lock_fd)
        self._fd = self._lock_fd = None
        self._inode = self._end = None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _open_for_append(self) -> int:
        """Open (or reopen, if another writer replaced the file) under the lock."""
        if self._fd is not None:
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == self._inode:
                return self._fd
            fd, self._fd, self._end = self._fd, None, None
            os.close(fd)
        # O_RDWR so the tail can be checked with pread; O_APPEND makes every write land at the end.
        fd = open_nofollow(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "DLQ journal", DLQStorageError
        )
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        return fd

    def _clean_end(self, fd: int) -> int:
        """Make the file end with a complete line; return its size.

        A writer that was killed mid-write, or a write that failed half-way (disk
        full), leaves bytes after the last newline. Appending behind them would glue
        the next record to garbage, so they are cut off first (or, if they are a
        complete record that only lacks its newline, finished). Runs under the
        exclusive lock, so no other writer is between its check and its cut.
        """
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0 or size == self._end or os.pread(fd, 1, size - 1) == b"\n":
            return size
        start = size
        cut = -1
        while start > 0 and cut < 0:
            start = max(0, start - 65536)
            chunk = os.pread(fd, size - start, start)
            cut = chunk.rfind(b"\n")
        keep = start + cut + 1  # 0 when the file holds no newline at all
        tail = pread_all(fd, size - keep, keep)
        if parse_line(tail) is not None:
            write_all(fd, b"\n")
            return size + 1
        os.ftruncate(fd, keep)
        self._torn_cuts += 1
        log = logger.warning if self._torn_cuts == 1 else logger.debug
        log("DLQ journal %r: cut a torn last record (%d bytes; %d cut by this queue so far)",
            self.path, len(tail), self._torn_cuts)
        return keep

    # -- opening ----------------------------------------------------------------

    def prepare(self) -> None:
        """Check the directory and files (no symlink), remove a killed compaction's leftovers.

        Raises:
            DLQStorageError: the directory is unusable, or a file of the queue is a symlink.
        """
        private_directory(self.directory, "DLQ directory", DLQStorageError)
        for path, what in ((self.path, "DLQ journal"), (self.lock_path, "DLQ lock file"),
                           (self.archive_path, "DLQ archive")):
            refuse_symlink(path, what, DLQStorageError)
        names = os.listdir(self.directory)
        stale = any(n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX) for n in names)
        inboxes = any(n.startswith(INBOX_PREFIX) or n.endswith(".new") for n in names)
        if not stale and not inboxes:
            return  # nothing to clean: take no lock, create no file (read-only users)
        self._lock(fcntl.LOCK_EX)  # a live compaction holds it: its temp file is not stale
        try:
            removed = remove_stale_temp_files(self.directory, TEMP_PREFIX, TEMP_SUFFIX)
            if inboxes:
                self._adopt_orphans()
        finally:
            self._unlock()
        if removed:
            logger.warning("DLQ directory %r: removed %d temp file(s) left by an interrupted "
                           "compaction: %s", self.directory, len(removed), ", ".join(removed))

    def _adopt_orphans(self) -> None:
        """Move what a stopped shared queue's workers wrote to its inbox into the journal."""

        def journaled() -> Set[str]:
            try:
                found = read_records(self.path, strict=False, parse=False)
            except DLQFileNotFoundError:
                return set()
            return {_line_id(line) for line in found.lines}

        def append(lines: List[bytes]) -> None:
            self._write_locked(b"".join(lines))
            if self.fsync != "never":  # durable here before its inbox is removed
                self.sync()

        try:
            adopt_orphans(self.directory, journaled, append)
        except OSError as exc:  # a read-only user, a full disk: the inbox stays for later
            logger.warning("DLQ directory %r: could not move a stopped shared queue's inbox "
                           "into the journal (%s: %s); it stays for the next writer",
                           self.directory, type(exc).__name__, exc)

    # -- operations -----------------------------------------------------------

    def append(self, lines: List[bytes]) -> None:
        """Append ``lines``; they are in the kernel when this returns.

        Appends hold the exclusive lock: they are short, and it lets each one check
        that the file ends with a complete line before writing, with no other writer
        in between.

        Raises:
            OSError: the write failed (disk full, permission denied, ...). A partial
                write is cut off by the next append.
        """
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        try:
            self._lock(fcntl.LOCK_EX)
        except OSError:
            self._reset_handles()
            raise
        try:
            self._write_locked(data)
        except OSError:
            self._unlock()
            # Reopen everything next time: the directory may be gone, the tail torn.
            self._reset_handles()
            raise
        else:
            self._unlock()

    def _write_locked(self, data: bytes) -> None:
        fd = self._open_for_append()
        size = self._clean_end(fd)
        try:
            write_all(fd, data)
        except OSError:
            # All or nothing: a batch cut short (disk full) leaves no line of it
            # behind, so what is on disk is exactly what add() acknowledged.
            truncate_quietly(fd, size)
            raise
        self._end = size + len(data)
        self._dirty = True
        self._maybe_sync(fd)

    def _maybe_sync(self, fd: int) -> None:
        if self.fsync == "always":
            os.fdatasync(fd)
            self._dirty = False
        elif self.fsync == "batch":
            now = time.monotonic()
            if now - self._last_sync >= FSYNC_BATCH_INTERVAL_SECONDS:
                os.fdatasync(fd)
                self._last_sync = now
                self._dirty = False

    def compact(
        self, drop_ids: Set[str], replace: Dict[str, bytes], add: List[bytes],
        archive: Sequence[bytes] = (),
    ) -> None:
        """Rewrite the journal without ``drop_ids``, with ``replace``d lines and ``add``ed lines.

        The file is re-read under the exclusive lock, so records other writers
        appended are kept. ``archive`` lines (pruned entries) are appended and synced
        to the archive first: an entry leaves the journal only once it is archived.

        Raises:
            OSError: the rewrite failed; the old file is untouched.
            DLQCorruptError: the journal is corrupt and ``strict`` (it is never rewritten
                then); without ``strict`` unreadable records are dropped, with one WARNING
                per compaction giving the count.
        """
        self._lock(fcntl.LOCK_EX)
        try:
            if archive:
                self._append_archive(archive)
            try:
                found = read_records(self.path, strict=self.strict, parse=False)
            except DLQFileNotFoundError:
                found = ReadResult()
            current = found.lines
            # The same id can be on file twice (add_entry of an updated entry, load of a
            # file that overlaps): the later line is the newer version and wins, at
            # the position of the first, as when the file is read.
            kept: Dict[str, bytes] = {}
            for line in current:
                entry_id = _line_id(line)
                if entry_id not in drop_ids:
                    kept[entry_id] = line
            kept.update(replace)
            for line in add:
                kept[_line_id(line)] = line
            write_atomically(self.path, kept.values(), prefix=TEMP_PREFIX, error=DLQStorageError)
            unreadable = found.corrupt_skipped + found.torn_tail
            if unreadable:  # their bytes are gone now: never silently
                self._dropped_unreadable += unreadable
                logger.warning(
                    "DLQ journal %r: the compaction dropped %d unreadable line(s) (%d corrupt, "
                    "%d torn last); %d dropped by this queue so far",
                    self.path, unreadable, found.corrupt_skipped, found.torn_tail,
                    self._dropped_unreadable)
            if self._fd is not None:
                fd, self._fd, self._end = self._fd, None, None
                os.close(fd)
            self._dirty = False
        finally:
            self._unlock()

    def _append_archive(self, lines: Sequence[bytes]) -> None:
        """Append ``lines`` to the archive of pruned entries and fsync it (all or nothing)."""
        fd = open_nofollow(
            self.archive_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "DLQ archive", DLQStorageError
        )
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            try:
                write_all(fd, b"".join(lines))
                os.fdatasync(fd)
            except OSError:
                truncate_quietly(fd, size)
                raise
        finally:
            os.close(fd)

    def archive_size(self) -> int:
        """Bytes in the archive of pruned entries (0 when there is none)."""
        try:
            return os.lstat(self.archive_path).st_size
        except OSError:
            return 0

    def sync(self) -> None:
        """fsync pending appends (the batch-mode flush)."""
        if self._pid != os.getpid():
            return
        if self._fd is not None and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """fsync and release the file handles."""
        try:
            self.sync()
        finally:
            self._reset_handles()

    def __del__(self) -> None:
        # A queue dropped without close() must not leak its two descriptors.
        # (Appends are already in the kernel; only the batch fsync is skipped.)
        self._reset_handles()


def _line_id(line: bytes) -> str:
    """The entry id of a record line read back from the journal (a valid record)."""
    return record_id(line) or json.loads(line)["entry_id"]
