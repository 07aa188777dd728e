"""The ``"in_process"`` backend: chunks run in the caller's process, one at a time.

An explicit choice (``backend="in_process"``): no process starts and nothing is
pickled, so it is the fastest way to run work too small to be worth a worker.
What it gives up: a crash of the function (a segfault, ``os._exit``) ends the
caller, and no timeout can be enforced (the caller's thread cannot be stopped),
so a timeout is refused. What it keeps: a chunk stops after its first failed
item, so each failure reaches the DLQ (and its journal) before the next item
starts, and is on disk if the function then kills the process.

A ``KeyboardInterrupt`` raised by the function is an item failure, like any
``BaseException``. A real Ctrl-C is told apart by the SIGINT handler installed
while a chunk runs (when the caller's handler is Python's default one, in the
main thread): it marks the interrupt as real before raising it, and the run stops.
"""

from __future__ import annotations

import _signal
import contextlib
import signal
import threading
from typing import Any, Iterator, List, Optional

from amorsize._validate import invalid_value
from amorsize.backends import ChunkDone, ChunkSpec, ChunkTask
from amorsize.backends.loops import clear_real_interrupt, note_real_interrupt
from amorsize.backends.worker import run_chunk
from amorsize.failure import Failure

SIGINT = int(signal.SIGINT)


@contextlib.contextmanager
def _marking_real_interrupts() -> Iterator[None]:
    # _signal, not signal: signal.signal() converts to and from enums, which cost more
    # per chunk than a chunk of tiny items runs in.
    if (threading.current_thread() is not threading.main_thread()
            or _signal.getsignal(SIGINT) is not signal.default_int_handler):
        yield
        return
    _signal.signal(SIGINT, note_real_interrupt)
    try:
        yield
    finally:
        _signal.signal(SIGINT, signal.default_int_handler)
        clear_real_interrupt()


class InProcessPool:
    """A pool of width 1 that is the calling thread."""

    size = 1

    def __init__(self, spec: ChunkSpec) -> None:
        self._spec = spec
        self._task: Optional[ChunkTask] = None
        self._begin = 0  # where the task resumes after a failure

    def idle_count(self) -> int:
        return 0 if self._task is not None else 1

    def busy_count(self) -> int:
        return 1 if self._task is not None else 0

    def submit(self, task: ChunkTask) -> None:
        self._task, self._begin = task, 0

    def wait(self, timeout: Optional[float]) -> List[Any]:
        task, begin = self._task, self._begin
        if task is None:
            return []
        with _marking_real_interrupts():
            result = run_chunk(self._spec, task, stop_at_failure=True, begin=begin)
        done = begin + len(result.values)
        # Stopped at a failure: the rest runs at the next wait(), from where it stopped
        # (not a copy of the rest: a chunk with many failures stays linear). Stopped by
        # the failure budget (no failure last): the rest never starts.
        end: Optional[int] = None  # the event's task: the rest of the chunk, or up to a failure
        if done < len(task.items) and result.values and isinstance(result.values[-1], Failure):
            self._begin = end = done
        else:
            self._task = None
        if begin == 0 and end is None:
            return [ChunkDone(task, result)]
        return [ChunkDone(ChunkTask(task.chunk_id, task.start + begin, task.items[begin:end]), result)]

    def close(self, *, kill: bool = False) -> None:
        self._task = None


class InProcessBackend:
    """Run chunks in this process (``backend="in_process"``); its width is always 1."""

    name = "in_process"
    chooses_width = True

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> InProcessPool:
        if timeout is not None:
            raise invalid_value("timeout", timeout, "None with backend='in_process' (use 'processes')")
        return InProcessPool(spec)
