"""The ``"processes"`` backend (the default): worker processes on this machine, one chunk each.

Each worker owns a duplex pipe and a two-slot shared array (the position and the
start time of the item it is running). One chunk per worker means the parent
always knows which chunk a dead worker held, and the shared array tells it which
item: that item alone is dead-lettered, the rest of the chunk runs again
(pebble's "worker death fails one task, not the pool", narrowed to one item).
An answer is accepted only from the worker and for the chunk it was sent to
(see :mod:`amorsize.backends.process_worker`).

Workers ignore SIGINT (the parent handles Ctrl-C and stops them), die with the
parent (``PR_SET_PDEATHSIG``), and lead their own process group: whenever a
worker is stopped (crash, timeout, shutdown, Ctrl-C) its whole group is killed
with SIGKILL, so processes started or forked by ``func`` go with it. An item
that cannot be pickled is reported as lost with reason ``unpicklable_item``.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any, Dict, List, Optional

import cloudpickle

from amorsize.backends import ChunkLost, ChunkSpec, ChunkTask
from amorsize.backends.inherited import InputSlice
from amorsize.backends.process_handle import Answer, WorkerHandle, reap, said_goodbye
from amorsize.backends.process_worker import HEADER, START_FAILURE_ID, UNKNOWN_ITEM, UNSENDABLE, StartFailure
from amorsize.errors import CrashLoopError
from amorsize.run.guard import MAIN_GUARD_EXIT, main_guard_error

#: How long a politely stopped worker gets to leave before its group is killed.
TERMINATE_GRACE_SECONDS = 0.5
#: How often the parent checks running items against the timeout.
TIMEOUT_POLL_SECONDS = 0.05
#: A worker that dies before it starts its chunk blames no item: the chunk goes to a
#: fresh worker, this many times in a row at most (then the first item is blamed).
MAX_UNSTARTED_LOSSES = 3


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


def pickled_task(task: ChunkTask, inherit: bool = False) -> bytes:
    """``task`` as sent to a worker; a view of a lent input as its bounds (``inherit``: fork)."""
    if inherit and type(task.items) is InputSlice:
        task = replace(task, items=task.items.bounds())
    try:
        return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)


def unsendable(task: ChunkTask, error: Exception) -> ChunkLost:
    """The loss of the first item of ``task`` that cannot be pickled (``unpicklable_item``)."""
    for position, item in enumerate(task.items):
        try:
            pickled_task(ChunkTask(task.chunk_id, task.start, [item]))
        except Exception as exc:
            return ChunkLost(task, position, "unpicklable_item", {"error": exc})
    return ChunkLost(task, 0, "unpicklable_item", {"error": error})


class ProcessBackend:
    """Worker processes on this machine (``backend="processes"``, the default)."""

    name = "processes"
    chooses_width = False
    #: Forked workers slice a lent input list themselves (amorsize.backends.inherited).
    inherits_input = True
    #: Its pools can ``grow()``: a run may probe with one worker, then widen.
    can_grow = True

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

    #: Its ChunkDone events unpickle their result when first read (see process_handle.Answer).
    decodes_lazily = True

    def __init__(
        self, spec: ChunkSpec, *, n_jobs: int, start_method: Optional[str], timeout: Optional[float]
    ) -> None:
        self._ctx = multiprocessing.get_context(start_method)
        self._forks = self._ctx.get_start_method() == "fork"
        self._spec_bytes = cloudpickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        self._timeout = timeout
        self._unstarted_losses = 0
        self._events: List[Any] = []  # losses found at submit time, reported by the next wait()
        self._workers: List[WorkerHandle] = []
        #: Started ahead of a likely grow() (see prestart); idle, not counted in size.
        self._spares: List[WorkerHandle] = []
        #: Spares told to leave, reaped at close().
        self._leaving: List[WorkerHandle] = []
        try:
            self.grow(n_jobs)
        except BaseException:
            self.close(kill=True)
            raise

    def _new_worker(self) -> WorkerHandle:
        try:
            return WorkerHandle(self._ctx, self._spec_bytes, self._timeout is not None)
        except (EOFError, ConnectionError):  # the forkserver died re-running main
            if self._ctx.get_start_method() == "forkserver":
                raise main_guard_error("forkserver") from None
            raise

    def grow(self, n: int) -> None:
        """Add ``n`` workers: started spares first, then new ones."""
        for _ in range(n):
            self._workers.append(self._spares.pop() if self._spares else self._new_worker())

    def prestart(self, n: int) -> None:
        """Start ``n`` workers ahead of a likely :meth:`grow`, while a probe chunk runs.

        A worker takes milliseconds to fork (a spawned one, a Python start-up): started
        now, it is ready when the probe's decision comes instead of starting after it.
        The ones :meth:`grow` does not take leave at :meth:`release_spares`.
        """
        for _ in range(n):
            self._spares.append(self._new_worker())

    def release_spares(self) -> None:
        """Tell the spares :meth:`grow` did not take to leave (reaped at :meth:`close`)."""
        for worker in self._spares:
            worker.tell_to_leave()
        self._leaving.extend(self._spares)
        self._spares = []

    def retire_idle(self) -> None:
        """Tell the idle workers to leave now (no chunk is coming); reaped at :meth:`close`.

        Not while a loss found at submit time waits to be reported: the rest of its
        chunk comes back, and no worker would be left to run it.
        """
        if self._events:
            return
        idle = [w for w in self._workers if w.task is None]
        self._workers = [w for w in self._workers if w.task is not None]
        for worker in idle:
            worker.tell_to_leave()
        self._leaving.extend(idle)

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def start_method(self) -> str:
        return str(self._ctx.get_start_method())

    def idle_count(self) -> int:
        return sum(1 for w in self._workers if w.task is None)

    def busy_count(self) -> int:
        return sum(1 for w in self._workers if w.task is not None) + len(self._events)

    def submit(self, task: ChunkTask) -> None:
        """Send ``task`` to an idle worker (the caller checks ``idle_count()`` first)."""
        try:
            data = pickled_task(task, self._forks)
        except Exception as exc:
            self._events.append(unsendable(task, exc))
            return
        worker = next(w for w in self._workers if w.task is None)
        try:
            worker.send(data, task)
        except OSError:
            pass  # the worker died between tasks; the next wait() reports the loss

    def wait(self, timeout: Optional[float]) -> List[Any]:
        """Block until a chunk finishes or is lost (or ``timeout`` passes); return events."""
        if self._events:
            found, self._events = self._events, []
            return found
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return []
        if self._timeout is not None:
            timeout = TIMEOUT_POLL_SECONDS if timeout is None else min(timeout, TIMEOUT_POLL_SECONDS)
        handles: Dict[Any, WorkerHandle] = {}
        for w in busy:
            if not w.eof:
                handles[w.conn] = w
            handles[w.process.sentinel] = w
        ready = wait(list(handles), timeout)
        events: List[Any] = []
        seen = set()
        for handle in ready:
            worker = handles[handle]
            if id(worker) not in seen:
                seen.add(id(worker))
                event = self._collect(worker)
                if event is not None:
                    events.append(event)
        if self._timeout is not None:
            events.extend(self._enforce_timeout([w for w in busy if id(w) not in seen]))
        return events

    def _collect(self, worker: WorkerHandle) -> Any:
        task = worker.task
        assert task is not None
        try:
            if not worker.eof and worker.conn.poll():
                data = worker.conn.recv_bytes()
                return self._answer(worker, task, data)
        except (EOFError, OSError):
            if worker.process.is_alive():  # func closed its pipe: judge when it exits
                worker.eof = True
                return None
        return self._dead(worker, task)

    def _answer(self, worker: WorkerHandle, task: ChunkTask, data: bytes) -> Any:
        if worker.accepts(data, START_FAILURE_ID):
            failure: StartFailure = pickle.loads(data[HEADER.size:])
            raise CrashLoopError(
                f"a worker process could not load the function ({failure.error}); no item "
                "was run. Is the function importable in a fresh process?\n\n"
                f"Worker traceback:\n{failure.traceback}"
            )
        if not worker.accepts(data, task.chunk_id):
            return self._replace(worker, "worker_crash", "a message that was not its answer to "
                                 "this chunk (a process forked by the function?)")
        worker.task = None
        self._unstarted_losses = 0
        if data[HEADER.size:HEADER.size + 1] == UNSENDABLE:  # an item of an inherited slice
            position, error = pickle.loads(memoryview(data)[HEADER.size + 1:])
            return ChunkLost(task, position, "unpicklable_item", {"error": error})
        return Answer(task, data)

    def _dead(self, worker: WorkerHandle, task: ChunkTask) -> Any:
        """The worker died without answering: while running the task, or before starting it."""
        worker.process.join(TERMINATE_GRACE_SECONDS)
        if worker.process.exitcode == MAIN_GUARD_EXIT and worker.progress[0] == -1:
            raise main_guard_error(self._ctx.get_start_method())
        if worker.progress[0] == UNKNOWN_ITEM:
            return self._replace(worker, "worker_crash", position=None)
        if worker.progress[0] < 0 and self._unstarted_losses < MAX_UNSTARTED_LOSSES:
            self._unstarted_losses += 1
            self._replace(worker, "worker_crash")
            self.submit(task)  # no item ran, so none is to blame: give it to the new worker
            return None
        return self._replace(worker, "worker_crash")

    def _enforce_timeout(self, workers: List[WorkerHandle]) -> List[Any]:
        assert self._timeout is not None
        now = time.monotonic()
        return [
            self._replace(w, "timeout")
            for w in workers
            if w.task is not None and now - w.progress[1] > self._timeout
        ]

    def _replace(self, worker: WorkerHandle, reason: str, cause: Optional[str] = None,
                 position: Optional[int] = -1) -> ChunkLost:
        task = worker.task
        assert task is not None
        if position == -1:
            position = max(0, min(int(worker.progress[0]), len(task.items) - 1))
        pid = worker.process.pid
        worker.stop()
        exitcode = worker.process.exitcode
        detail: Dict[str, Any] = {"pid": pid, "exitcode": exitcode}
        if reason == "timeout":
            detail["timeout_seconds"] = self._timeout
        else:
            detail["cause"] = cause or describe_exit(exitcode)
            if exitcode is not None and exitcode < 0 and cause is None:
                detail["signal"] = signal.Signals(-exitcode).name if -exitcode in _SIGNALS else -exitcode
        index = self._workers.index(worker)
        self._workers[index] = self._new_worker()
        return ChunkLost(task, position, reason, detail)

    def close(self, *, kill: bool = False) -> None:
        """Stop every worker and its process group; leaves no process behind.

        Idle workers are asked to leave and get one grace period; busy ones (and all,
        with ``kill``) are killed at once. Whatever interrupts this (a second Ctrl-C),
        every group is killed on the way out.
        """
        told = self._leaving  # released spares: told to leave already
        workers, self._workers = [*self._workers, *self._spares, *told], []
        self._spares, self._leaving = [], []
        handed_off = False
        try:
            for worker in workers:
                if kill or worker.task is not None:
                    worker.kill()
                elif worker not in told and worker.tell_to_leave():
                    told.append(worker)
            deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
            if not kill and len(told) == len(workers) and all(said_goodbye(w, deadline) for w in told):
                # Each one flushed its output and is on its way out; the kernel's teardown
                # of its memory (milliseconds after a large parent's fork) needs no one
                # waiting for it. A non-daemon thread reaps them: the interpreter waits for
                # it at exit, and it kills what is left at the deadline.
                handed_off = _reap_later(workers, deadline)
                if handed_off:
                    return
            for worker in workers:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        finally:
            if not handed_off:
                reap(workers, 0.0)


def _reap_later(workers: List[WorkerHandle], deadline: float) -> bool:
    """Reap ``workers`` in a thread; False when no thread can start (interpreter shutdown)."""
    try:
        threading.Thread(target=reap, args=(workers, deadline), name="amorsize-reaper").start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown": reap here
        return False
    return True


_SIGNALS = {int(s) for s in signal.Signals}
