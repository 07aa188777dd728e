"""A worker's side of the shared queue: its connection to the manager, its own journal appends.

A failure's journal line is in the kernel before the hook returns, written by one
of two writers:

* **the worker itself** (:class:`JournalAppender`), when the queue lets it (a JSON
  journal without deduplication, on a unix-socket lane): the line is appended as
  any writer of a shared journal appends (:class:`~amorsize.dlq.journal.Journal`:
  the exclusive ``flock``, a check that the file ends with a whole line, one
  ``O_APPEND`` write, a reopen if a compaction replaced the file) and the hook
  returns; the manager reads it from the journal (:mod:`amorsize.dlq.tail`). The
  lock has a deadline, so a stopped manager holding it blocks no worker for longer
  than the queue's ``timeout``; the open lane connection tells that the queue is
  still open (:meth:`IngestClient.gone`), so a closed queue takes no appends.
* **the manager** (:meth:`IngestClient.send`, :mod:`amorsize.dlq.ingest`) otherwise:
  the hook waits for its ack.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import threading
import time
from multiprocessing.connection import Client
from typing import Any, Iterator, List

from amorsize.dlq._deadline import timed_client
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.ingest import ACK, HEADER, IngestError, encode_entries
from amorsize.dlq.journal import Journal

#: Tries of a journal lock another writer holds, each after a sched_yield(), before sleeping.
LOCK_YIELDS = 100
#: First and longest sleep (seconds) between further tries.
LOCK_POLL_FIRST_SECONDS = 0.0002
LOCK_POLL_MAX_SECONDS = 0.02


class IngestClient:
    """One authenticated connection to a manager's lane; thread-safe (a lock per message)."""

    def __init__(self, address: Any, authkey: bytes, timeout: float | None = None) -> None:
        conn = Client(address, authkey=authkey) if timeout is None else timed_client(
            address, authkey=authkey, timeout=timeout
        )
        try:
            # A manager that stopped (SIGSTOP) answers nobody: every send and recv has a
            # deadline, the kernel's (SO_SNDTIMEO/SO_RCVTIMEO, set by timed_client): a
            # Python-level timeout would cost a poll() before each of them.
            self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        finally:
            conn.close()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN | select.POLLRDHUP)

    def send(self, entries: List[DLQEntry]) -> None:
        """Store ``entries`` in the manager's queue; returns once they are stored.

        Raises:
            EOFError, OSError: the manager is gone.
            IngestError: the manager could not decode or store them.
        """
        frame = encode_entries(entries)
        with self._lock, self._deadline():
            self._sock.sendall(frame)
            status = self._recv_exactly(1)
            if status == ACK:
                return
            (size,) = HEADER.unpack(self._recv_exactly(HEADER.size))
            raise IngestError(self._recv_exactly(size).decode("utf-8", "replace"))

    def gone(self) -> bool:
        """True when the manager closed this connection (checked without waiting).

        The manager sends nothing unasked (acks are read by :meth:`send`), so
        anything to read means it hung up.
        """
        with self._lock:  # a poll object takes one caller at a time
            return bool(self._poll.poll(0))

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[None]:
        try:
            yield
        except BlockingIOError:  # SO_SNDTIMEO/SO_RCVTIMEO expired
            raise TimeoutError(f"the DLQ manager did not answer within {self.timeout} s") from None

    def _recv_exactly(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = self._sock.recv(size)
            if not chunk:
                raise EOFError("the DLQ manager closed the connection")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()


class JournalAppender(Journal):
    """A worker's handle on the shared queue's journal: appends only, its lock has a deadline."""

    def __init__(self, directory: str, *, fsync: str, timeout: float) -> None:
        super().__init__(directory, fsync=fsync)
        self.timeout = timeout
        self._size = 0
        self.lock = threading.Lock()  # one append at a time per process (the hook is thread-safe)

    def _lock(self, mode: int) -> int:
        fd = self._lock_fd
        if fd is None:  # (no getpid() check per append: capture forgets appenders at fork)
            fd = super()._lock(fcntl.LOCK_UN)  # opens the lock file
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        # Another writer holds it, most likely a worker for the ~10 us of its append:
        # yield first (a sleep would cost the timer's slack, ~60 us), then sleep longer.
        for _ in range(LOCK_YIELDS):
            os.sched_yield()
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
        deadline = time.monotonic() + self.timeout
        pause = LOCK_POLL_FIRST_SECONDS
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the DLQ journal lock {self.lock_path} was held for more than "
                        f"{self.timeout} s (is the manager stopped?)"
                    ) from None
                time.sleep(pause)
                pause = min(2 * pause, LOCK_POLL_MAX_SECONDS)

    def _open_for_append(self) -> int:
        # One fstat instead of a stat of the path: a compaction's os.replace leaves our
        # inode without links. Its size spares _clean_end an lseek.
        fd = self._fd
        if fd is not None:
            info = os.fstat(fd)
            if info.st_nlink:
                self._size = info.st_size
                return fd
        fd = super()._open_for_append()
        self._size = os.fstat(fd).st_size
        return fd

    def _clean_end(self, fd: int) -> int:
        size = self._size  # read under the lock, just now
        if size == 0 or size == self._end or os.pread(fd, 1, size - 1) == b"\n":
            return size
        return super()._clean_end(fd)  # a torn tail: cut (or finished) as any writer does

    def append_line(self, line: bytes) -> None:
        """Append one record (in the kernel on return). Raises OSError (TimeoutError included)."""
        with self.lock:
            self.append([line])
