"""The listening sockets of a shared queue's manager (its lane): made, and cleaned up."""

from __future__ import annotations

import os
import socket
import stat
from multiprocessing.util import Finalize
from typing import Any

#: Connections a listening socket queues before accept().
BACKLOG = 128


def listen(address: Any) -> socket.socket:
    """A listening socket at a loopback ``(host, port)`` or a unix socket path (a stale file replaced)."""
    if isinstance(address, tuple):
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    else:
        remove_stale_socket(address)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(address)
        Finalize(sock, unlink_quietly, args=(address,), exitpriority=0)
    sock.listen(BACKLOG)
    return sock


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale_socket(path: str) -> None:
    """Unlink a socket file nobody listens on (left by a manager that was killed)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError:
            pass
