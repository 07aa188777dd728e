"""The failure budget (``max_failures``): stop a run once too many items failed for good.

```
 parent (Dispatcher)                               every worker of the run
 FailureBudget(3) ─ mkstemp 0600 (/dev/shm) ─►  amorsize-budget-XXXX (mmap'ed, 24 bytes)
                                                [failed: q][finished: q][stop: q]
 judge(finished, failed) per returned chunk;      before each item: read the stop byte
   sets stop (counts items lost in the parent)    after a final failure: report(ok, 1)
 stopped() before each new chunk                  under flock: add, judge, maybe set stop
 close(): remove the file                         at the end of a chunk: report(ok, 0)
```

Workers count as failures happen, so a broken deployment costs about
``max_failures`` failed calls across the whole pool, not a chunk's worth per
worker: every worker sees the stop at its next item boundary. The parent judges
too, from the chunks it gets back, so the budget holds where workers cannot
reach the file (a remote backend: then it stops at chunk boundaries).

Why a file: the run's :class:`~amorsize.backends.ChunkSpec` travels as bytes to
workers of any start method; a path does, a ``multiprocessing.Value`` does not
(the same reason as :mod:`amorsize._pace_state`). The per-item check is one byte
read from shared memory; without a budget there is no check at all.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import threading
import weakref
from typing import Any

from amorsize._pace_state import state_root
from amorsize.errors import FailureBudgetExceededError

#: A fractional budget is judged once at least this many items have finished.
FRACTION_MIN_ITEMS = 20
#: The shared file: failed, finished (items counted so far), stop flag.
LAYOUT = "<qqq"
SIZE = struct.calcsize(LAYOUT)
#: Byte offset of the stop flag's low byte (nonzero: stop).
STOP_BYTE = 16
FILE_PREFIX = "amorsize-budget-"


def exceeded(max_failures: float, finished: int, failed: int) -> bool:
    """Whether ``failed`` items out of ``finished`` spend a budget of ``max_failures``."""
    if isinstance(max_failures, int):
        return failed > max_failures
    return finished >= FRACTION_MIN_ITEMS and failed > max_failures * finished


class FailureBudget:
    """One run's failure budget, shared with its workers by path; pickles by path."""

    def __init__(self, max_failures: float) -> None:
        self.max_failures = max_failures
        fd, self.path = tempfile.mkstemp(prefix=FILE_PREFIX, dir=state_root())
        try:
            os.write(fd, bytes(SIZE))
        finally:
            os.close(fd)
        self._pid = -1
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _remove, self.path, os.getpid())

    def __reduce__(self) -> Any:
        return (_attach, (self.path, self.max_failures))

    def flag(self) -> mmap.mmap | None:
        """The shared memory whose byte ``STOP_BYTE`` is nonzero once the run must stop.

        None where the file cannot be reached (a worker on another machine).
        """
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._open()
        return self._map

    def stopped(self) -> bool:
        """Whether any process of the run has spent the budget."""
        shared = self.flag()
        return shared is not None and shared[STOP_BYTE] != 0

    def report(self, ok: int, failed: int) -> None:
        """Worker side: ``ok`` more items succeeded and ``failed`` more failed for good."""
        shared = self.flag()
        if shared is None or not (ok or failed):
            return
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                total_failed, finished, stop = struct.unpack_from(LAYOUT, shared)
                total_failed += failed
                finished += ok + failed
                stop = stop or exceeded(self.max_failures, finished, total_failed)
                struct.pack_into(LAYOUT, shared, 0, total_failed, finished, int(stop))
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def judge(self, finished: int, failed: int) -> None:
        """Parent side: stop the run if its own counts spend the budget."""
        if exceeded(self.max_failures, finished, failed):
            shared = self.flag()
            if shared is not None:
                shared[STOP_BYTE] = 1  # one byte: readers never see it torn

    def close(self) -> None:
        """Close this process's handles; in the creating process also remove the file."""
        with self._lock:
            if self._map is not None and self._pid == os.getpid():
                self._map.close()
                os.close(self._fd)
            self._map, self._pid = None, -1
        if hasattr(self, "_finalizer"):
            self._finalizer()

    def _open(self) -> None:
        # A forked child must not use its parent's descriptor: flock would not exclude them.
        self._map, self._pid = None, os.getpid()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            self._map = mmap.mmap(fd, SIZE)
        except (OSError, ValueError):
            os.close(fd)
            return
        self._fd = fd


def _attach(path: str, max_failures: float) -> FailureBudget:
    """Unpickle in a worker: the sender's file, opened on first use."""
    budget = FailureBudget.__new__(FailureBudget)
    budget.path, budget.max_failures = path, max_failures
    budget._pid, budget._fd, budget._map = -1, -1, None
    budget._lock = threading.Lock()
    return budget


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked child's copy of the finalizer: not its file
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Budget:
    """The parent's side of ``max_failures`` for one run; a no-op without a budget.

    It counts this run's finished and failed items (the breaker's rejections are
    finished, not failed), sets the shared stop when they spend the budget, and
    builds the error that accounts for every input.
    """

    def __init__(self, max_failures: float | None, chunker: Any) -> None:
        self.max_failures = max_failures
        self.shared = FailureBudget(max_failures) if max_failures is not None else None
        self.finished = 0
        self.failed = 0
        self._chunker = chunker
        self._segments: list[tuple[int, list[Any]]] = []

    def stopped(self) -> bool:
        return self.shared is not None and self.shared.stopped()

    def record(self, start: int, values: list[Any], failed: int) -> None:
        """A finished segment of this run, ``failed`` of its items counting against the budget."""
        if self.shared is None:
            return
        self._segments.append((start, values))
        self.finished += len(values)
        self.failed += failed
        self.shared.judge(self.finished, self.failed)

    def check(self, earlier: list[tuple[int, list[Any]]]) -> None:
        """After the pool drained: raise if the budget stopped the run.

        ``earlier``: segments finished before the pool opened (a resumed checkpoint,
        the dry run).
        """
        if self.stopped():
            raise self.error(earlier)

    def error(self, earlier: list[tuple[int, list[Any]]]) -> FailureBudgetExceededError:
        total = self._chunker.total
        # Without a length (or past a len() that undercounted): what was read, including
        # items the feeder read ahead (gone from the caller's iterator: not started).
        read = self._chunker.next_start
        end = total if total is not None and read <= total else read + self._chunker.feeder.unread()
        results: list[Any] = [None] * end
        done = [False] * end
        for start, values in [*earlier, *self._segments]:
            results[start:start + len(values)] = values
            done[start:start + len(values)] = [True] * len(values)
        not_started = _gaps(done)
        count = sum(len(r) for r in not_started)
        unread = "" if total is not None else " (items the run never read are still in the iterator)"
        return FailureBudgetExceededError(
            f"{self.failed} items failed for good, more than max_failures={self.max_failures!r} "
            f"allows ({self.finished} finished); stopped the run: {count} items were not "
            f"started (.not_started){unread}; finished results are in .results, failures in "
            "the DLQ",
            failed=self.failed, finished=self.finished, max_failures=self.max_failures or 0,
            results=results, not_started=not_started,
        )

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()


def _gaps(done: list[bool]) -> list[range]:
    """The runs of False in ``done``, as ranges of positions."""
    gaps: list[range] = []
    begin: int | None = None
    for position, flag in enumerate(done):
        if not flag and begin is None:
            begin = position
        elif flag and begin is not None:
            gaps.append(range(begin, position))
            begin = None
    if begin is not None:
        gaps.append(range(begin, len(done)))
    return gaps
