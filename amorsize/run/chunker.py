"""The chunker: cuts the input into chunk tasks, lazily, and queues chunks to run again.

Positions are counted from the start of the input. Chunk sizes come from a
:class:`~amorsize.sizing.chunks.ChunkSizer` (started once the pool's width is known).
Chunks waiting to run again (the rest of a lost chunk, halves of a bisected one,
items whose dry run failed) go before any new input is read. Ranges a resumed
run already finished (*skip ranges*, from the checkpoint) are read past, never
run; a chunk never spans the start of one.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Deque, Iterator, List, Optional, Tuple

from amorsize.backends import ChunkTask
from amorsize.run.feeder import Feeder
from amorsize.sizing.chunks import ChunkSizer


class Chunker:
    """Chunk tasks from ``source`` (``total`` items, or None when unknown)."""

    def __init__(self, source: Iterator[Any], total: Optional[int]) -> None:
        #: Reads the input; in a thread when its length is unknown (it may block).
        self.feeder = Feeder(source, threaded=total is None)
        self.total = total
        self.next_start = 0
        self.exhausted = False
        #: The last read found no item ready, but the input has not ended.
        self.starved = False
        self.pending: Deque[ChunkTask] = collections.deque()
        self.skip: Deque[Tuple[int, int]] = collections.deque()
        self.sizer: Optional[ChunkSizer] = None
        self._ids = itertools.count()

    def start_sizer(self, first: int, *, n_jobs: int, target: float, adaptive: bool) -> None:
        self.sizer = ChunkSizer(
            first, n_jobs=n_jobs, total_items=self.total, target_chunk_duration=target,
            adaptive=adaptive,
        )

    def observe(self, n_items: int, compute_seconds: float) -> None:
        """Feed a finished chunk's in-worker time to the sizer."""
        if self.sizer is not None:
            self.sizer.observe(n_items, compute_seconds)

    def task(self, start: int, items: List[Any]) -> ChunkTask:
        return ChunkTask(next(self._ids), start, items)

    def subtask(self, task: ChunkTask, begin: int, end: Optional[int]) -> ChunkTask:
        """Positions ``begin:end`` of ``task`` as a new task."""
        return self.task(task.start + begin, task.items[begin:end])

    def again(self, *tasks: ChunkTask) -> None:
        """Run ``tasks`` next, in this order, before anything else."""
        for task in reversed(tasks):
            if task.items:
                self.pending.appendleft(task)

    def next_task(self, limit: Optional[int] = None, *, read: bool = True) -> Optional[ChunkTask]:
        """The next chunk of at most ``limit`` items; with ``read`` False, only a queued one."""
        if self.pending:
            task = self.pending.popleft()
            if limit is not None and len(task.items) > limit:
                self.pending.appendleft(self.subtask(task, limit, None))
                task = self.subtask(task, 0, limit)
            return task
        self.starved = False
        if self.exhausted or not read:
            return None
        self._read_past_finished()
        size = self._size(limit)
        chunk = self.feeder.take(max(size, 1))
        if not chunk:
            self.exhausted = self.feeder.finished
            self.starved = not self.exhausted
            return None
        task = self.task(self.next_start, chunk)
        self.next_start += len(chunk)
        self.exhausted = self.feeder.finished
        return task

    def _size(self, limit: Optional[int]) -> int:
        assert self.sizer is not None, "start_sizer() before reading the input"
        remaining = None if self.total is None else self.total - self.next_start
        size = self.sizer.next_size(remaining)
        if self.skip:
            size = min(size, self.skip[0][0] - self.next_start)
        if limit is not None:
            size = min(size, limit)
        return size

    def _read_past_finished(self) -> None:
        while self.skip and self.skip[0][0] <= self.next_start:
            _begin, end = self.skip.popleft()  # finished by a previous run
            self.feeder.take_exactly(end - self.next_start)
            self.next_start = end
