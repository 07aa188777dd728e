"""Connections to a shared DLQ's manager whose every send and recv has a deadline.

A manager process that is stopped (SIGSTOP, a debugger, swapped out) still accepts
connections in the kernel but answers nobody; without deadlines every worker that
records a failure, and the parent, would block forever.
"""

from __future__ import annotations

import socket
import struct
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any


def timed_client(address: Any, *, authkey: bytes | None, timeout: float) -> Connection:
    """``multiprocessing.connection.Client`` whose every send and recv has a deadline.

    The kernel's SO_RCVTIMEO/SO_SNDTIMEO bound each blocking read and write (the
    socket stays blocking, as Connection needs), so a stopped manager (SIGSTOP)
    turns into a TimeoutError instead of a hang, in the handshake too.
    """
    family = socket.AF_INET6 if isinstance(address, tuple) and ":" in address[0] else (
        socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    )
    sock = socket.socket(family)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.settimeout(None)
        set_socket_deadline(sock, timeout)
        conn = Connection(sock.detach())
    except BaseException:
        sock.close()
        raise
    try:
        if authkey is not None:
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
    except BlockingIOError:
        conn.close()
        raise TimeoutError(
            f"the DLQ manager did not answer the handshake within {timeout} s"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def set_socket_deadline(sock: socket.socket, timeout: float) -> None:
    """Bound each blocking send and recv on ``sock`` to ``timeout`` seconds (kernel timers)."""
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
