"""A worker's connection to the shared queue's manager (its ingest lane).

A failure's line is in the kernel before the hook returns, written by one of two
writers:

* **the worker itself**, to its own file in the queue's inbox, when the queue lets
  it (a JSON journal without deduplication, on a unix-socket lane): see
  :mod:`amorsize.dlq.inbox`. The open lane connection tells that the queue is still
  open (:meth:`IngestClient.gone`), so a closed queue takes no lines.
* **the manager** (:meth:`IngestClient.send`, :mod:`amorsize.dlq.ingest`) otherwise:
  the hook waits for its ack.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from multiprocessing.connection import Client
from typing import Any, Iterator, List

from amorsize.dlq._deadline import timed_client
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.ingest import ACK, HEADER, IngestError, encode_entries

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
