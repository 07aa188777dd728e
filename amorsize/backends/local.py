"""The ``"processes"`` backend (the default): worker processes on this machine, one chunk each.

Each worker owns a duplex pipe and a two-slot shared array (the position and the
start time of the item it is running). One chunk per worker means the parent
always knows which chunk a dead worker held, and the shared array tells it which
item: that item alone is dead-lettered, the rest of the chunk runs again
(pebble's "worker death fails one task, not the pool", narrowed to one item).

Workers ignore SIGINT (the parent handles Ctrl-C and stops them), and die with
the parent: ``PR_SET_PDEATHSIG`` on Linux, and a check that the parent did not
vanish before it was set.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import pickle
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Dict, List, Optional

import cloudpickle

from amorsize.backends import ChunkDone, ChunkLost, ChunkSpec, ChunkTask
from amorsize.backends.worker import encode_result, run_chunk
from amorsize.errors import CrashLoopError

#: After SIGTERM, how long a stopping worker gets before SIGKILL.
TERMINATE_GRACE_SECONDS = 0.5
#: How often the parent checks running items against the timeout.
TIMEOUT_POLL_SECONDS = 0.05
#: A worker that dies before it starts its chunk blames no item: the chunk goes to a
#: fresh worker, this many times in a row at most (then the first item is blamed).
MAX_UNSTARTED_LOSSES = 3
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class _StartFailure:
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


def _worker_main(conn: Any, progress: Any, spec_bytes: bytes, timed: bool) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    recv, send = conn.recv_bytes, conn.send_bytes
    clock = time.monotonic if timed else None  # item start times matter only under a timeout
    try:
        spec: ChunkSpec = pickle.loads(spec_bytes)
    except Exception as exc:  # tell the parent why, at its first task, and stop
        failure = _StartFailure(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            if recv():
                send(pickle.dumps(failure))
        except (EOFError, OSError):
            pass
        return
    while True:
        try:
            data = recv()
        except (EOFError, OSError):
            return
        if not data:
            return
        task = pickle.loads(data)
        send(encode_result(run_chunk(spec, task, progress, clock), spec))


def describe_exit(exitcode: Optional[int]) -> str:
    """A human explanation of a worker's exit code, naming the likely cause."""
    if exitcode is None:
        return "the worker vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hints = {
            "SIGKILL": "killed, often by the out-of-memory killer or kill -9",
            "SIGSEGV": "a segmentation fault in native code",
            "SIGBUS": "a bus error in native code",
            "SIGABRT": "an abort in native code",
            "SIGTERM": "terminated by another process",
        }
        return f"the worker was killed by {name} ({hints.get(name, 'a fatal signal')})"
    return f"the worker exited with code {exitcode} (os._exit or sys.exit inside the function?)"


class _Worker:
    def __init__(self, ctx: Any, spec_bytes: bytes, timed: bool) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.progress = ctx.RawArray("d", 2)
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, self.progress, spec_bytes, timed),
            name="amorsize-worker", daemon=True,
        )
        self.process.start()
        child_conn.close()
        self.task: Optional[ChunkTask] = None

    def send(self, task: ChunkTask) -> None:
        try:
            data = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            data = cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        self.progress[0] = -1  # not started: run_chunk sets the position of each item
        # The item clock starts when the worker starts the item (run_chunk sets slot 1),
        # not now: a fresh worker's start-up (spawn imports) is not the item's time.
        self.progress[1] = math.inf
        self.task = task
        self.conn.send_bytes(data)

    def stop(self, *, kill: bool) -> None:
        if self.process.is_alive() and not kill:
            try:
                self.conn.send_bytes(b"")
            except OSError:
                pass
            self.process.join(TERMINATE_GRACE_SECONDS)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(TERMINATE_GRACE_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessBackend:
    """Worker processes on this machine (``backend="processes"``, the default).

    ``serial_in_process``: a run of width 1 without a timeout runs in the caller's
    process instead (the behaviour of ``n_jobs=1`` so far; a later release runs it
    in one worker process).
    """

    name = "processes"
    chooses_width = False
    serial_in_process = True

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> LocalProcessPool:
        return LocalProcessPool(spec, n_jobs=n_jobs or 1, start_method=start_method, timeout=timeout)


#: The name of :class:`ProcessBackend` before 0.2.
LocalBackend = ProcessBackend


class LocalProcessPool:
    """Worker processes on this machine; see the module docstring."""

    def __init__(
        self, spec: ChunkSpec, *, n_jobs: int, start_method: Optional[str], timeout: Optional[float]
    ) -> None:
        self._ctx = multiprocessing.get_context(start_method)
        self._spec_bytes = cloudpickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        self._timeout = timeout
        self._unstarted_losses = 0
        self._workers: List[_Worker] = [self._new_worker() for _ in range(n_jobs)]

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self._spec_bytes, self._timeout is not None)

    @property
    def size(self) -> int:
        return len(self._workers)

    def idle_count(self) -> int:
        return sum(1 for w in self._workers if w.task is None)

    def busy_count(self) -> int:
        return sum(1 for w in self._workers if w.task is not None)

    def submit(self, task: ChunkTask) -> None:
        """Send ``task`` to an idle worker (the caller checks ``idle_count()`` first)."""
        worker = next(w for w in self._workers if w.task is None)
        try:
            worker.send(task)
        except OSError:
            # The worker died between tasks; the next wait() reports the loss.
            pass

    def wait(self, timeout: Optional[float]) -> List[Any]:
        """Block until a chunk finishes or is lost (or ``timeout`` passes); return events."""
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return []
        if self._timeout is not None:
            timeout = TIMEOUT_POLL_SECONDS if timeout is None else min(timeout, TIMEOUT_POLL_SECONDS)
        handles: Dict[Any, _Worker] = {}
        for w in busy:
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        ready = wait(list(handles), timeout)
        events: List[Any] = []
        seen = set()
        for handle in ready:
            worker = handles[handle]
            if id(worker) in seen:
                continue
            seen.add(id(worker))
            event = self._collect(worker)
            if event is not None:
                events.append(event)
        if self._timeout is not None:
            events.extend(self._enforce_timeout([w for w in busy if id(w) not in seen]))
        return events

    def _collect(self, worker: _Worker) -> Any:
        task = worker.task
        assert task is not None
        try:
            if worker.conn.poll():
                data = worker.conn.recv_bytes()
                worker.task = None
                result = pickle.loads(data)
                if isinstance(result, _StartFailure):
                    raise CrashLoopError(
                        f"a worker process could not load the function ({result.error}); no "
                        "item was run. Is the function importable in a fresh process?\n\n"
                        f"Worker traceback:\n{result.traceback}"
                    )
                self._unstarted_losses = 0
                return ChunkDone(task, result)
        except (EOFError, OSError):
            pass
        # No result: the worker died, while running the task or before starting it.
        if worker.progress[0] < 0 and self._unstarted_losses < MAX_UNSTARTED_LOSSES:
            self._unstarted_losses += 1
            self._replace(worker, "worker_crash")
            self.submit(task)  # no item ran, so none is to blame: give it to the new worker
            return None
        return self._replace(worker, "worker_crash")

    def _enforce_timeout(self, workers: List[_Worker]) -> List[Any]:
        assert self._timeout is not None
        now = time.monotonic()
        return [
            self._replace(w, "timeout")
            for w in workers
            if w.task is not None and now - w.progress[1] > self._timeout
        ]

    def _replace(self, worker: _Worker, reason: str) -> ChunkLost:
        task = worker.task
        assert task is not None
        position = max(0, min(int(worker.progress[0]), len(task.items) - 1))
        pid = worker.process.pid
        worker.stop(kill=True)
        exitcode = worker.process.exitcode
        detail: Dict[str, Any] = {"pid": pid, "exitcode": exitcode}
        if reason == "timeout":
            detail["timeout_seconds"] = self._timeout
        else:
            detail["cause"] = describe_exit(exitcode)
            if exitcode is not None and exitcode < 0:
                detail["signal"] = signal.Signals(-exitcode).name if -exitcode in _SIGNALS else -exitcode
        index = self._workers.index(worker)
        self._workers[index] = self._new_worker()
        return ChunkLost(task, position, reason, detail)

    def close(self, *, kill: bool = False) -> None:
        """Stop every worker: politely, or at once with ``kill``; leaves no process behind.

        All workers are signalled first and joined after, so stopping takes one grace
        period, not one per worker (Ctrl-C must be over within 2 seconds).
        """
        workers, self._workers = self._workers, []
        for worker in workers:
            if kill or worker.task is not None:
                if worker.process.is_alive():
                    worker.process.terminate()
            else:
                try:
                    worker.conn.send_bytes(b"")
                except OSError:
                    pass
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            worker.stop(kill=True)


_SIGNALS = {int(s) for s in signal.Signals}
