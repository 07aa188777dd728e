"""The ``"threads"`` backend: a pool of threads in the caller's process, for I/O-bound work.

```
 dispatcher ── submit(task) ──► thread i inbox ──► run_chunk(spec, task, slots)
            ◄── wait() ◄──────── done queue ◄──── (thread, task, result)
 watchdog (in wait): slots = [position, start time] per thread; an item past the
   timeout → ChunkLost(position, "timeout"); the thread is *abandoned*, a fresh one
   takes its place.
```

Same options and outcomes as ``"processes"``: items and results are never
pickled (they stay in this process), a failed item is a DLQ entry, a timed-out
one is dead-lettered ``timeout``. The items of its chunk before it keep their
values (they are in this process, :class:`~amorsize.backends.loops.Partial`), so
each runs once; the items after it run on a fresh thread.

Width: ``n_jobs=None`` gives ``min(32, cpu_count + 4)`` threads, as
``concurrent.futures.ThreadPoolExecutor`` does: I/O waits release the GIL, so
more threads than cores pay off, and 32 caps the memory of many idle stacks on
big machines. Pass ``n_jobs`` for more (64 for a slow API is common).

**An abandoned thread.** A thread cannot be killed. One whose item overran its
timeout (or that was running when the run stopped) keeps running the call to its
end in the background; whatever it returns or raises is discarded, and it then
exits without starting another item of its chunk (the items after the one it
was in run elsewhere: they would run twice). It learns that between items from
its clock, which every thread reads before each item. Threads are daemons, started
with :class:`threading.Thread` (not ``ThreadPoolExecutor``, whose exit hook joins
every worker), so neither the run nor the interpreter's exit ever waits for an
abandoned thread. A crash (a segfault in native code) takes the whole process
down: use ``"processes"`` for code that may crash.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from typing import Any, List, Optional

from amorsize.backends import ChunkDone, ChunkLost, ChunkSpec, ChunkTask
from amorsize.backends.loops import Partial
from amorsize.backends.worker import run_chunk

#: How often ``wait`` checks running items against the timeout (seconds).
TIMEOUT_POLL_SECONDS = 0.02
#: ``ThreadPoolExecutor``'s default width: ``min(MAX_DEFAULT_THREADS, cpu + EXTRA_THREADS)``.
MAX_DEFAULT_THREADS = 32
EXTRA_THREADS = 4


def default_threads() -> int:
    """The width of ``n_jobs=None``: ``min(32, cpu_count + 4)``, as ThreadPoolExecutor."""
    return min(MAX_DEFAULT_THREADS, (os.cpu_count() or 1) + EXTRA_THREADS)


class _Thread:
    """One worker thread: its inbox, the chunk it runs, and its progress slots."""

    def __init__(self, pool: ThreadPool, number: int) -> None:
        self.inbox: queue.SimpleQueue[Optional[ChunkTask]] = queue.SimpleQueue()
        self.task: Optional[ChunkTask] = None
        self.abandoned = False
        # [position, start time] of the running item, written by run_chunk before each
        # item, when it reads the clock below.
        self.slots: List[float] = [-1.0, math.inf]
        self.partial = Partial()  # the values so far: kept if an item times out
        self.thread = threading.Thread(
            target=_thread_main, args=(self, pool.spec, pool.done), daemon=True,
            name=f"amorsize-thread-{number}",
        )
        self.thread.start()

    def clock(self) -> float:
        """The start time of the next item; raises :class:`_Abandoned` in a thread given up on."""
        if self.abandoned:
            raise _Abandoned
        return time.monotonic()


class _Abandoned(Exception):
    """Raised between items in an abandoned thread: it must not start another one."""


def _thread_main(worker: _Thread, spec: ChunkSpec, done: queue.SimpleQueue[Any]) -> None:
    while True:
        task = worker.inbox.get()
        if task is None:
            return
        try:
            outcome: Any = run_chunk(spec, task, worker.slots, worker.clock, partial=worker.partial)
        except _Abandoned:
            return
        except BaseException as exc:  # SystemExit and the like from func: the item's, not the pool's
            outcome = exc
        done.put((worker, task, outcome))
        if worker.abandoned:
            return


class ThreadBackend:
    """Threads in this process (``backend="threads"``); sizes itself (see module doc)."""

    name = "threads"
    chooses_width = True
    serial_in_process = False

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> ThreadPool:
        return ThreadPool(spec, n_jobs=n_jobs or default_threads(), timeout=timeout)


class ThreadPool:
    """Worker threads, one chunk each; see the module docstring."""

    def __init__(self, spec: ChunkSpec, *, n_jobs: int, timeout: Optional[float]) -> None:
        self.spec = spec
        self.timeout = timeout
        self.done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._started = 0
        self._threads: List[_Thread] = [self._new_thread() for _ in range(n_jobs)]

    def _new_thread(self) -> _Thread:
        self._started += 1
        return _Thread(self, self._started)

    @property
    def size(self) -> int:
        return len(self._threads)

    def idle_count(self) -> int:
        return sum(1 for t in self._threads if t.task is None)

    def busy_count(self) -> int:
        return sum(1 for t in self._threads if t.task is not None)

    def submit(self, task: ChunkTask) -> None:
        worker = next(t for t in self._threads if t.task is None)
        worker.slots[0], worker.slots[1] = -1.0, math.inf
        worker.task = task
        worker.inbox.put(task)

    def wait(self, timeout: Optional[float]) -> List[Any]:
        """Block until chunks finish (or ``timeout`` passes, or an item overruns); their events."""
        if not self.busy_count():
            return []
        if self.timeout is not None:
            timeout = TIMEOUT_POLL_SECONDS if timeout is None else min(timeout, TIMEOUT_POLL_SECONDS)
        events: List[Any] = []
        try:
            message = self.done.get(timeout=timeout)
            while True:
                event = self._collect(*message)
                if event is not None:
                    events.append(event)
                message = self.done.get_nowait()
        except queue.Empty:
            pass
        if self.timeout is not None:
            events.extend(self._enforce_timeout())
        return events

    def _collect(self, worker: _Thread, task: ChunkTask, outcome: Any) -> Any:
        if worker.abandoned or worker.task is not task:
            return None  # from a thread given up on: its late result is discarded
        worker.task = None
        if not isinstance(outcome, BaseException):
            return ChunkDone(task, outcome)
        # func raised SystemExit (or the like) past run_chunk: this thread's chunk is lost.
        self._abandon(worker)
        position = max(0, int(worker.slots[0]))
        cause = f"{type(outcome).__name__} raised in the worker thread"
        return ChunkLost(task, position, "worker_crash",
                         {"pid": os.getpid(), "exitcode": None, "cause": cause, "thread": worker.thread.name},
                         worker.partial.before(task, position, worker.slots[1]))

    def _enforce_timeout(self) -> List[Any]:
        assert self.timeout is not None
        now = time.monotonic()
        lost: List[Any] = []
        for worker in list(self._threads):
            task, slots = worker.task, worker.slots
            if task is None or now - slots[1] <= self.timeout:
                continue
            position = max(0, min(int(slots[0]), len(task.items) - 1))
            self._abandon(worker)
            detail = {"pid": os.getpid(), "exitcode": None, "timeout_seconds": self.timeout,
                      "thread": worker.thread.name, "abandoned": True}
            finished = worker.partial.before(task, position, slots[1])
            lost.append(ChunkLost(task, position, "timeout", detail, finished))
        return lost

    def _abandon(self, worker: _Thread) -> None:
        """Give up on ``worker`` (it exits after its call) and put a fresh thread in its place."""
        worker.abandoned = True
        worker.inbox.put(None)
        self._threads[self._threads.index(worker)] = self._new_thread()

    def close(self, *, kill: bool = False) -> None:
        """Tell every thread to stop; never waits for one (busy ones finish in the background)."""
        threads, self._threads = self._threads, []
        for worker in threads:
            worker.abandoned = True
            worker.inbox.put(None)
