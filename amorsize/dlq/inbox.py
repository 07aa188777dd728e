"""Workers' own files for a shared queue's failures: one ``write(2)`` each (issue 18).

A ``capture()`` hook records its failure before it returns. Appending to the shared
journal itself cost five system calls (lock, check for a compaction, check of the
journal's tail, write, unlock), and with several workers they waited on each other's
locks. Instead each worker process appends to a file of its own in its manager's
*inbox*, and the manager moves the lines into the journal:

```
 <dir>/.inbox-<token>/                 0700, one per manager, which holds a flock on it
 <dir>/.inbox-<token>/<pid>-<n>-<hex>.jsonl  0600, a worker process's n-th file; it holds a flock
 <dir>/.inbox-<token>/offsets.json     how far the manager had moved each file (saved
                                       before a compaction and at close)
```

* **A worker** (:class:`SegmentWriter`) appends a line with one ``O_APPEND`` write: it
  is in the kernel when the hook returns. A write that falls short (disk full) is cut
  back (the file is the worker's alone) and the hook gives the failure to the manager.
  A file is created under a temporary name and locked before it gets its final name,
  so the manager never takes a file being born for one whose writer is gone.
* **The manager** (:class:`Inbox`), before every call that reads the queue and every
  0.1 s, reads the whole lines written since, appends those it does not hold to the
  journal in one write, takes them in, and removes a file once its writer is gone
  (a torn last line, from a writer killed mid-write, is dropped with a WARNING).
* **Orphans** (:func:`adopt_orphans`): an inbox whose manager died is moved into the
  journal by the next queue that opens the directory (:meth:`Journal.prepare`): the
  lines after the saved offsets whose ids the journal does not hold. Offsets are saved
  before every compaction, so an entry moved and then removed never comes back.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from amorsize._fs import truncate_quietly, write_all, write_atomically
from amorsize.dlq.policy import FSYNC_BATCH_INTERVAL_SECONDS
from amorsize.dlq.records import parse_line, record_id

logger = logging.getLogger("amorsize.dlq")

INBOX_PREFIX = ".inbox-"
_INBOX_NAME = re.compile(r"^\.inbox-[0-9a-f]{16}$")
_SEGMENT_NAME = re.compile(r"^[0-9]+-[0-9a-f]{8}-[0-9a-f]{8}\.jsonl$")
_STALE_TEMP = re.compile(r"^\.[0-9a-f]{16}\.new$")
OFFSETS_FILE_NAME = "offsets.json"
#: A worker starts a new file after this many bytes, so the manager can remove the old one.
ROTATE_BYTES = 8 << 20
#: A temporary inbox or file older than this whose maker holds no lock was left by a kill.
STALE_TEMP_SECONDS = 60.0
#: Bytes read at a time.
READ_BYTES = 1 << 20
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


_file_numbers = itertools.count()


def whole_lines(fd: int, offset: int) -> bytes:
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


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _born_locked(directory: str, final: str, make: Callable[[str], int]) -> int:
    """``make(temp path)`` (an fd), flock it, then rename it to ``final``: never seen unlocked."""
    temp = os.path.join(directory, f".{secrets.token_hex(8)}.new")
    fd = make(temp)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temp, final)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(temp) if not os.path.isdir(temp) else os.rmdir(temp)
        except OSError:
            pass
        raise
    return fd


class SegmentWriter:
    """A worker process's file in an inbox: appends one line at a time (thread-safe)."""

    def __init__(self, inbox: str, *, fsync: str) -> None:
        self.inbox = inbox
        self.fsync = fsync
        self._fd: Optional[int] = None
        self._end = 0
        self._last_sync = time.monotonic()
        self._lock = threading.Lock()  # one line at a time (the hook is thread-safe)

    def _open(self) -> int:
        # <pid>-<sequence>: one process's files sort in the order it wrote them.
        name = os.path.join(self.inbox, f"{os.getpid()}-{next(_file_numbers):08x}-"
                                        f"{secrets.token_hex(4)}.jsonl")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        self._fd = _born_locked(self.inbox, name, lambda temp: os.open(temp, flags, 0o600))
        self._end = 0
        return self._fd

    def append_line(self, line: bytes) -> None:
        """Append ``line`` (in the kernel on return). Raises OSError; nothing of it stays then."""
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            try:
                write_all(fd, line)
            except OSError:
                truncate_quietly(fd, self._end)  # all or nothing: the manager never sees half
                raise
            self._end += len(line)
            if self.fsync == "always" or (self.fsync == "batch" and time.monotonic()
                                          - self._last_sync >= FSYNC_BATCH_INTERVAL_SECONDS):
                os.fdatasync(fd)
                self._last_sync = time.monotonic()
            if self._end >= ROTATE_BYTES:
                self._close()  # the manager removes it once read; the next line starts a new file

    def forget(self) -> None:
        """In a forked child: drop the parent's file without touching it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            if self.fsync != "never":
                try:
                    os.fdatasync(fd)
                except OSError:
                    pass
            os.close(fd)  # releases the flock: the manager may remove the file once read


class _Segment:
    __slots__ = ("fd", "gone", "offset", "torn")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset = fd, offset
        self.gone = False  # its writer closed it or died: remove it once read
        self.torn = 0  # bytes after its last whole line, once its writer is gone

    def new_lines(self) -> bytes:
        """The whole lines after ``offset``; once the writer is gone, also counts ``torn``."""
        data = whole_lines(self.fd, self.offset)
        if self.gone:
            self.torn = os.fstat(self.fd).st_size - self.offset - len(data)
        return data


class Inbox:
    """A manager's inbox: :meth:`read` the new lines, then :meth:`commit` once they are journaled."""

    def __init__(self, directory: str) -> None:
        token = secrets.token_hex(8)
        self.path = os.path.join(directory, f"{INBOX_PREFIX}{token}")

        def make(temp: str) -> int:
            os.mkdir(temp, 0o700)
            os.chmod(temp, 0o700)  # whatever the umask
            return os.open(temp, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)

        self._dir_fd = _born_locked(directory, self.path, make)
        self._segments: Dict[str, _Segment] = {}
        self._pending: List[Tuple[_Segment, int]] = []

    def read(self) -> List[bytes]:
        """The whole lines written since the last :meth:`commit`."""
        lines: List[bytes] = []
        self._pending = []
        for name in sorted(os.listdir(self.path)):
            segment = self._segment(name)
            if segment is None:
                continue
            if not segment.gone:
                segment.gone = _try_lock(segment.fd)  # then nothing more will be written
            data = segment.new_lines()
            self._pending.append((segment, segment.offset + len(data)))
            lines.extend(data.splitlines(keepends=True))
        return lines

    def _segment(self, name: str) -> Optional[_Segment]:
        segment = self._segments.get(name)
        if segment is None and _SEGMENT_NAME.match(name):
            segment = _open_segment(os.path.join(self.path, name), 0)
            if segment is not None:
                self._segments[name] = segment
        return segment

    def finishing(self) -> bool:
        """The last :meth:`read` saw a file whose writer is gone (:meth:`commit` removes it)."""
        return any(segment.gone for segment, _ in self._pending)

    def commit(self) -> None:
        """The lines of the last :meth:`read` are in the journal: move on, remove finished files."""
        for segment, offset in self._pending:
            segment.offset = offset
        self._pending = []
        for name, segment in list(self._segments.items()):
            if segment.gone:
                _finish(os.path.join(self.path, name), segment)
                del self._segments[name]

    def save_offsets(self, *, durable: bool = True) -> None:
        """Write how far each file was moved: after each move (``durable=False``: no
        fsync, it survives a killed process), and durably before a compaction and at
        close, so an entry moved and then removed never comes back (module doc)."""
        data = json.dumps({name: s.offset for name, s in self._segments.items()}).encode()
        path = os.path.join(self.path, OFFSETS_FILE_NAME)
        if durable:
            write_atomically(path, [data], prefix=".offsets-")
            return
        temp = os.path.join(self.path, ".offsets.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)

    def close(self) -> None:
        """Save the offsets of files still being written; remove the inbox if none is."""
        try:
            if self._segments:
                self.save_offsets()
            else:
                _remove_inbox(self.path)
        finally:
            for segment in self._segments.values():
                os.close(segment.fd)
            self._segments.clear()
            os.close(self._dir_fd)


def _open_segment(path: str, offset: int) -> Optional[_Segment]:
    try:
        # O_NONBLOCK: a FIFO named like a file would block the open (checked just below).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError as exc:  # a symlink (ELOOP) or gone: never read through a link
        logger.warning("DLQ inbox: skipped %r (%s)", path, exc)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        logger.warning("DLQ inbox: skipped %r: not a regular file", path)
        return None
    return _Segment(fd, offset)


def _warn_if_torn(path: str, segment: _Segment) -> None:
    if segment.torn > 0:
        logger.warning("DLQ inbox %r: dropped a torn last line (%d bytes) of a writer killed "
                       "mid-write; its hook never returned", path, segment.torn)


def _finish(path: str, segment: _Segment) -> None:
    _warn_if_torn(path, segment)
    os.close(segment.fd)
    try:
        os.unlink(path)
    except OSError:  # gone already; or left for the next queue, which skips what it holds
        pass


def _remove_inbox(path: str) -> None:
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def adopt_orphans(directory: str, journaled: Callable[[], Set[str]],
                  append: Callable[[List[bytes]], None]) -> int:
    """Move the lines of inboxes whose manager and writers are gone into the journal.

    ``journaled()``: the ids the journal holds (read only when there is an orphan);
    ``append(lines)``: write them to the journal (the caller holds its lock). Returns
    how many lines were moved. Raises OSError (the inbox is left as it was then).
    """
    moved = 0
    held: Optional[Set[str]] = None
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _STALE_TEMP.match(name):
            _remove_if_unlocked(path)  # a manager killed while it made its inbox
            continue
        if not _INBOX_NAME.match(name):
            continue
        lines = _orphan_lines(path)
        if lines is None:
            continue
        if held is None:
            held = journaled()
        fresh, unreadable = [], 0
        for line in lines:
            entry_id = record_id(line) if parse_line(line) is not None else None
            if entry_id is None:
                unreadable += 1
            elif entry_id not in held:
                held.add(entry_id)
                fresh.append(line)
        if unreadable:
            logger.warning("DLQ inbox %r: dropped %d line(s) that are not whole records",
                           path, unreadable)
        if fresh:
            append(fresh)
            moved += len(fresh)
        _remove_inbox(path)
    if moved:
        logger.warning("DLQ directory %r: moved %d failure record(s) of a stopped shared queue "
                       "from its inbox into the journal", directory, moved)
    return moved


def _remove_if_unlocked(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        # Younger ones may be being born (made, not yet locked): leave them.
        if time.time() - info.st_mtime > STALE_TEMP_SECONDS and _try_lock(fd):
            if stat.S_ISDIR(info.st_mode):
                _remove_inbox(path)
            elif stat.S_ISREG(info.st_mode):
                os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _orphan_lines(path: str) -> Optional[List[bytes]]:
    """The lines of an inbox nobody holds, or None to leave it (it is alive, or not ours)."""
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError:
        return None  # not a directory we made (a symlink, a file): leave it alone
    try:
        if not _try_lock(dir_fd):
            return None  # its manager is alive
        offsets = _saved_offsets(path)
        lines: List[bytes] = []
        for name in sorted(os.listdir(path)):
            segment = _open_segment(os.path.join(path, name), offsets.get(name, 0)) \
                if _SEGMENT_NAME.match(name) else None
            if segment is None:
                continue
            try:
                segment.gone = _try_lock(segment.fd)
                if not segment.gone:
                    return None  # a worker still writes (its manager died before it)
                lines.extend(segment.new_lines().splitlines(keepends=True))
                _warn_if_torn(path, segment)
            finally:
                os.close(segment.fd)
        return lines
    finally:
        os.close(dir_fd)


def _saved_offsets(path: str) -> Dict[str, int]:
    try:
        with open(os.path.join(path, OFFSETS_FILE_NAME), "rb") as handle:
            offsets = json.loads(handle.read())
        return {str(k): int(v) for k, v in offsets.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("DLQ inbox %r: unreadable offsets (%s); ids the journal holds are "
                       "skipped instead", path, exc)
        return {}
