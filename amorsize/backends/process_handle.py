"""The parent's side of one worker process: its handle, its answers, its end.

:class:`WorkerHandle` starts a worker (:func:`~amorsize.backends.process_worker.worker_main`),
sends it chunks and tells its answers from anything else; :class:`Answer` is a
:class:`~amorsize.backends.ChunkDone` whose result is unpickled only when read;
:func:`said_goodbye` and :func:`reap` end workers that were told to leave.
"""

from __future__ import annotations

import math
import pickle
import secrets
import time
from typing import Any, List, Optional

from amorsize.backends import ChunkDone, ChunkResult, ChunkTask
from amorsize.backends.process_worker import HEADER, kill_group, own_group, worker_main


class WorkerHandle:
    """The parent's handle on one worker process: its pipe, progress slots and chunk."""

    def __init__(self, ctx: Any, spec_bytes: bytes, timed: bool) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.progress = ctx.RawArray("d", 2)
        self.nonce = secrets.randbits(64)
        self.process = ctx.Process(
            target=worker_main, args=(child_conn, self.progress, spec_bytes, timed, self.nonce),
            name="amorsize-worker", daemon=True,
        )
        self.process.start()
        own_group(self.process.pid)
        child_conn.close()
        self.task: Optional[ChunkTask] = None
        self.eof = False  # its pipe closed while it runs: wait for it to exit

    def send(self, data: bytes, task: ChunkTask) -> None:
        self.progress[0] = -1  # not started: run_chunk sets the position of each item
        # The item clock starts when the worker starts the item (run_chunk sets slot 1),
        # not now: a fresh worker's start-up (spawn imports) is not the item's time.
        self.progress[1] = math.inf
        self.task = task
        self.conn.send_bytes(data)

    def accepts(self, data: bytes, chunk_id: int) -> bool:
        """Whether ``data`` is this worker's answer to chunk ``chunk_id``."""
        if len(data) < HEADER.size:
            return False
        return HEADER.unpack_from(data) == (self.nonce, self.process.pid, chunk_id)

    def tell_to_leave(self) -> bool:
        """Ask the idle worker to flush, say goodbye and exit; False if its pipe is gone."""
        try:
            self.conn.send_bytes(b"")
        except OSError:
            return False
        return True

    def kill(self) -> None:
        kill_group(self.process.pid)
        if self.process.is_alive():
            self.process.kill()

    def stop(self) -> None:
        """Kill its process group and reap it."""
        self.kill()
        self.process.join()
        kill_group(self.process.pid)  # what func started after the first kill
        self.conn.close()


class Answer(ChunkDone):
    """A :class:`ChunkDone` whose result is unpickled when first read.

    The dispatcher sends the worker its next chunk first (``decodes_lazily``), so the
    worker computes while the parent unpickles this answer.
    """

    _data: bytes
    _result: Optional[ChunkResult]

    def __init__(self, task: ChunkTask, data: bytes) -> None:  # not the dataclass __init__
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_result", None)

    @property
    def result(self) -> ChunkResult:
        result = self._result
        if result is None:
            result = pickle.loads(memoryview(self._data)[HEADER.size:])
            object.__setattr__(self, "_result", result)
            object.__setattr__(self, "_data", b"")
        return result


def said_goodbye(worker: WorkerHandle, deadline: float) -> bool:
    """Whether ``worker``, told to leave, answered (its output flushed) or closed its pipe."""
    try:
        if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
            return False
        worker.conn.recv_bytes()
        return True
    except (EOFError, OSError):
        return True


def reap(workers: List[WorkerHandle], deadline: float) -> None:
    """Wait for ``workers`` until ``deadline``, then kill their groups and reap them."""
    try:
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.stop()
