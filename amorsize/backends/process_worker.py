"""The worker process of the ``"processes"`` backend: its main loop and its wire format.

Every answer starts with a header, ``(nonce, pid, chunk_id)``: the worker's
per-process random nonce, its pid and the chunk it answers. The parent accepts
an answer only from the worker and for the chunk it sent; anything else (a copy
forked by ``func`` writing to the pipe) is a crash of that worker. A forked copy
never answers: it sees its pid is not the worker's and leaves.

Each worker leads its own process group, so stopping it stops every process
``func`` started or forked (see :func:`kill_group`).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from amorsize.backends import ChunkSpec
from amorsize.backends import worker as worker_side
from amorsize.backends.inherited import InheritedItems, first_unsendable
from amorsize.backends.worker import encode_result, run_chunk

HEADER = struct.Struct("<QqQ")
#: ``chunk_id`` of a start failure (the worker could not load the run's function).
START_FAILURE_ID = 2**64 - 1
#: progress[0] of a worker that finished its chunk but could not send the answer (its
#: pipe was closed by ``func``): which item broke it is unknown, so the chunk is bisected.
UNKNOWN_ITEM = -2.0
_PR_SET_PDEATHSIG = 1
#: Leads an answer that names an item of an inherited slice that could not have been
#: sent (a pickled result starts with the protocol byte 0x80, never this).
UNSENDABLE = b"U"


@dataclass(frozen=True)
class StartFailure:
    """Sent instead of a result by a worker that could not load the run's function."""

    error: str
    traceback: str


def _die_with_parent() -> None:
    try:
        # dlopen(NULL): libc is already mapped. find_library("c") would run ldconfig in a
        # subprocess on every worker start (about 6 ms, more on a loaded machine).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the signal was armed
        os._exit(1)


def own_group(pid: int = 0) -> None:
    """Make ``pid`` (0: this process) lead its own process group; both sides call it (no race)."""
    try:
        os.setpgid(pid, pid)
    except OSError:  # already done by the other side, or the child already exec'd
        pass


def kill_group(pid: int | None) -> None:
    """SIGKILL the process group led by worker ``pid``: the worker and all it started."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # gone already, or the group was never formed
        pass


def _goodbye(send: Any) -> None:
    """Flush this worker's output, then tell the parent (it need not wait for the exit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        send(b"")
    except OSError:
        pass


def worker_main(conn: Any, progress: Any, spec_bytes: bytes, timed: bool, nonce: int) -> None:
    """The loop of one worker: receive a chunk, run it, answer with a tagged result."""
    own_group()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_side.IN_WORKER = True
    me = os.getpid()
    recv, send = conn.recv_bytes, conn.send_bytes
    clock = time.monotonic if timed else None  # item start times matter only under a timeout
    try:
        spec: ChunkSpec = pickle.loads(spec_bytes)
        spec.restore_source()  # tracebacks name the user's script
    except Exception as exc:  # tell the parent why, at its first task, and stop
        failure = StartFailure(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            if recv():
                send(HEADER.pack(nonce, me, START_FAILURE_ID) + pickle.dumps(failure))
        except (EOFError, OSError):
            pass
        return
    while True:
        try:
            data = recv()
        except (EOFError, OSError):
            return
        if not data:  # told to leave: flush what func printed, say goodbye, go
            _goodbye(send)
            return
        task = pickle.loads(data)
        if type(task.items) is InheritedItems:  # not sent: could it have been?
            unsendable = first_unsendable(task.items)
            if unsendable is not None:
                send(HEADER.pack(nonce, me, task.chunk_id) + UNSENDABLE + pickle.dumps(unsendable))
                continue
        answer = encode_result(run_chunk(spec, task, progress, clock), spec)
        if os.getpid() != me:  # a copy forked by func: only the worker answers
            os._exit(0)
        try:
            send(HEADER.pack(nonce, me, task.chunk_id) + answer)
        except OSError:
            progress[0] = UNKNOWN_ITEM
            os._exit(1)
