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
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Set

from amorsize._fs import FILE_MODE, ensure_directory, write_atomically
from amorsize.dlq.policy import FSYNC_BATCH_INTERVAL_SECONDS
from amorsize.dlq.records import parse_line, record_id
from amorsize.errors import DLQCorruptError, DLQFileNotFoundError

logger = logging.getLogger("amorsize.dlq")

JOURNAL_FILE_NAME = "dlq.jsonl"
LOCK_FILE_NAME = ".dlq.lock"


@dataclass
class ReadResult:
    """What reading a journal found: records in file order and what was skipped."""

    records: List[Dict[str, Any]] = field(default_factory=list)
    numbers: List[int] = field(default_factory=list)  # the line number of each record
    lines: List[bytes] = field(default_factory=list)
    corrupt_skipped: int = 0
    torn_tail: bool = False


def read_records(path: str, *, strict: bool = True, parse: bool = True) -> ReadResult:
    """Read every record of the journal at ``path``.

    Args:
        strict: raise on a corrupt record before the last line; otherwise skip and count it.
        parse: parse records into dicts (False: only split lines, for compaction).

    Raises:
        DLQFileNotFoundError: ``path`` does not exist.
        DLQCorruptError: a record before the last line is unreadable and ``strict``.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DLQFileNotFoundError(f"DLQ file not found: {path!r}") from None
    result = ReadResult()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    last = len(lines) - 1
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = None
        if parse or number - 1 == last or record_id(line) is None:
            record = parse_line(line)
            if record is None:
                if number - 1 == last:
                    result.torn_tail = True
                    warnings.warn(
                        f"DLQ file {path!r}: skipped a torn last record at line {number} "
                        "(a write was cut short by a crash); every earlier record was loaded",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    break
                if strict:
                    raise DLQCorruptError(path, number, "the record is not a valid DLQ entry")
                result.corrupt_skipped += 1
                logger.warning("DLQ file %r: skipped corrupt record at line %d", path, number)
                continue
        if parse:
            result.records.append(record)  # type: ignore[arg-type]
            result.numbers.append(number)
        result.lines.append(line + b"\n")
    return result


class Journal:
    """The on-disk side of one queue. Not thread-safe: the queue's lock guards it."""

    def __init__(self, directory: str, *, fsync: str, strict: bool = True) -> None:
        self.directory = directory
        self.strict = strict
        self.path = os.path.join(directory, JOURNAL_FILE_NAME)
        self.lock_path = os.path.join(directory, LOCK_FILE_NAME)
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
            ensure_directory(self.directory)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
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
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, FILE_MODE)
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
        tail = _pread_all(fd, size - keep, keep)
        if parse_line(tail) is not None:
            _write_all(fd, b"\n")
            return size + 1
        os.ftruncate(fd, keep)
        logger.warning("DLQ journal %r: cut a torn last record (%d bytes)", self.path, len(tail))
        return keep

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
            fd = self._open_for_append()
            size = self._clean_end(fd)
            _write_all(fd, data)
            self._end = size + len(data)
            self._dirty = True
            self._maybe_sync(fd)
        except OSError:
            self._unlock()
            # Reopen everything next time: the directory may be gone, the tail torn.
            self._reset_handles()
            raise
        else:
            self._unlock()

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

    def compact(self, drop_ids: Set[str], replace: Dict[str, bytes], add: List[bytes]) -> None:
        """Rewrite the journal without ``drop_ids``, with ``replace``d lines and ``add``ed lines.

        The file is re-read under the exclusive lock, so records other writers
        appended are kept.

        Raises:
            OSError: the rewrite failed; the old file is untouched.
            DLQCorruptError: the journal is corrupt and ``strict`` (it is never rewritten
                then); without ``strict`` unreadable records are dropped (and logged).
        """
        self._lock(fcntl.LOCK_EX)
        try:
            try:
                current = read_records(self.path, strict=self.strict, parse=False).lines
            except DLQFileNotFoundError:
                current = []
            # The same id can be on file twice (add_entry of an updated entry, load of a
            # file that overlaps): the later line is the newer version and wins, at
            # the position of the first, as when the file is read.
            kept: Dict[str, bytes] = {}
            for line in current:
                entry_id = record_id(line) or json.loads(line)["entry_id"]
                if entry_id not in drop_ids:
                    kept[entry_id] = line
            kept.update(replace)
            for line in add:
                kept[record_id(line) or json.loads(line)["entry_id"]] = line
            write_atomically(self.path, kept.values())
            if self._fd is not None:
                fd, self._fd, self._end = self._fd, None, None
                os.close(fd)
            self._dirty = False
        finally:
            self._unlock()

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


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
