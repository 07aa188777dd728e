"""The chunker: cuts the input into chunk tasks, lazily, and queues chunks to run again.

Positions are counted from the start of the input. Chunk sizes come from a
:class:`~amorsize.sizing.chunks.ChunkSizer` (started once the pool's width is known).
Chunks waiting to run again (the rest of a lost chunk, halves of a bisected one,
items whose dry run failed) go before any new input is read. Ranges a resumed
run already finished (*skip ranges*, from the checkpoint) are read past, never
run; a chunk never spans the start of one.

**Memory stays flat.** Time alone would let a chunk of cheap items grow to a
million items, and a chunk of large ones to gigabytes. So a chunk is also capped
by items (``MAX_CHUNK_ITEMS``) and by its estimated encoded size
(``MAX_CHUNK_BYTES``): the chunker pickles one item of each chunk it reads (the
first item of the input before sizing the first chunk) and keeps a running
estimate of bytes per item (:class:`ByteEstimate`). The dispatcher uses the same
estimate to bound what it holds (in flight plus waiting to be put in order) by
``LOOKAHEAD_ITEMS_PER_WORKER`` and ``LOOKAHEAD_BYTES_PER_WORKER`` per worker.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import sys
from typing import Any, Deque, Iterator, List, Optional, Sequence, Tuple

from amorsize.backends import ChunkTask
from amorsize.run.feeder import Feeder
from amorsize.sizing.chunks import ChunkSizer

# --- memory bounds (tuning constants) ------------------------------------------------
#: Items the dispatcher holds per worker: in flight plus waiting in the reorder
#: buffer. At about 100 bytes per small item in the parent (the item, its result and
#: their list slots) that is ~13 MB per worker; the per-chunk cost of the process
#: backend (~0.2 ms) stays under 1% of a chunk of this size's share.
LOOKAHEAD_ITEMS_PER_WORKER = 131_072
#: Estimated encoded bytes (input and result) held per worker, the same way.
LOOKAHEAD_BYTES_PER_WORKER = 16 << 20
#: Chunks of the look-ahead: a chunk is at most a quarter of it, so a worker's next
#: chunk can be ready while others wait in the reorder buffer.
CHUNKS_PER_LOOKAHEAD = 4
#: Largest chunk, in items (cheap items would otherwise grow to MAX_CHUNKSIZE).
MAX_CHUNK_ITEMS = LOOKAHEAD_ITEMS_PER_WORKER // CHUNKS_PER_LOOKAHEAD
#: Largest chunk by estimated encoded size: a chunk is pickled whole in the parent
#: and unpickled whole in the worker, so each copy of it is at most this; 4 MiB still
#: amortises a chunk's round trip (it pickles in a few milliseconds).
MAX_CHUNK_BYTES = LOOKAHEAD_BYTES_PER_WORKER // CHUNKS_PER_LOOKAHEAD
#: A process worker reports its position once per block of items that take about
#: this long (``ChunkTask.report_every``): a crash then re-runs at most this much work
#: more than a per-item report would, while a tiny item stops paying ~40 ns per item
#: for the report.
REPORT_BLOCK_SECONDS = 50e-6
#: The largest such block (the loop cuts blocks by slicing: 128 items amortise it).
MAX_REPORT_EVERY = 128
#: Weight of a new sample in the bytes-per-item estimate when it is smaller (a larger
#: one is taken at once: over-estimating costs throughput, under-estimating memory).
BYTES_EWMA_ALPHA = 0.2


def encoded_size(value: Any) -> int:
    """Bytes ``value`` takes pickled; its in-memory size when it does not pickle."""
    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return sys.getsizeof(value)


class ByteEstimate:
    """A running estimate of encoded bytes per item: up at once, down slowly."""

    __slots__ = ("per_item",)

    def __init__(self) -> None:
        self.per_item: float = 0.0

    def observe(self, value: Any) -> None:
        size = encoded_size(value)
        if size >= self.per_item:
            self.per_item = float(size)
        else:
            self.per_item += BYTES_EWMA_ALPHA * (size - self.per_item)

    def items_within(self, budget: int) -> int:
        """How many items fit in ``budget`` bytes (at least 1; no bound before a sample)."""
        if self.per_item <= 0:
            return sys.maxsize
        return max(1, int(budget // self.per_item))


class Chunker:
    """Chunk tasks from ``source`` (``total`` items, or None when unknown)."""

    def __init__(self, source: Iterator[Any], total: Optional[int],
                 sequence: Optional[Sequence[Any]] = None) -> None:
        """``sequence``: the list or tuple ``source`` iterates, when it may be sliced instead."""
        #: Reads the input; in a thread when its length is unknown (it may block).
        self.feeder = Feeder(source, threaded=total is None, sequence=sequence)
        self.total = total
        self.next_start = 0
        self.exhausted = False
        #: The last read found no item ready, but the input has not ended.
        self.starved = False
        self.pending: Deque[ChunkTask] = collections.deque()
        self.skip: Deque[Tuple[int, int]] = collections.deque()
        self.sizer: Optional[ChunkSizer] = None
        self._ids = itertools.count()
        #: Encoded bytes per input item (sampled once per chunk read).
        self.item_bytes = ByteEstimate()
        #: One chunk holds the whole input (run.plan.in_one_chunk): no caps apply.
        self.whole = False
        #: Workers may report progress per block of items (no timeout, retry, rate
        #: limit or failure budget needs a report per item): see REPORT_BLOCK_SECONDS.
        self.blocks = False

    def start_sizer(self, first: int, *, n_jobs: int, target: float, adaptive: bool) -> None:
        # No total_items: _size() passes what remains itself, and stops once the input
        # outgrew its len().
        self.sizer = ChunkSizer(first, n_jobs=n_jobs, target_chunk_duration=target, adaptive=adaptive)

    def observe(self, n_items: int, compute_seconds: float) -> None:
        """Feed a finished chunk's in-worker time to the sizer."""
        if self.sizer is not None:
            self.sizer.observe(n_items, compute_seconds)

    def task(self, start: int, items: List[Any], report_every: int = 1) -> ChunkTask:
        return ChunkTask(next(self._ids), start, items, report_every)

    def subtask(self, task: ChunkTask, begin: int, end: Optional[int],
                report_every: Optional[int] = None) -> ChunkTask:
        """Positions ``begin:end`` of ``task`` as a new task (reporting as ``task`` does)."""
        every = task.report_every if report_every is None else report_every
        return self.task(task.start + begin, task.items[begin:end], every)

    def report_every(self) -> int:
        """Items per progress report for a new chunk (``ChunkTask.report_every``)."""
        per_item = self.sizer.per_item_seconds if self.sizer is not None else None
        if not self.blocks or per_item is None:
            return 1
        if per_item <= REPORT_BLOCK_SECONDS / MAX_REPORT_EVERY:
            return MAX_REPORT_EVERY
        return max(1, int(REPORT_BLOCK_SECONDS / per_item))

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
        chunk = self.feeder.take(max(self._size(limit), 1))
        if not chunk:
            self.exhausted = self.feeder.finished
            self.starved = not self.exhausted
            return None
        if not self.whole:  # the whole input in one chunk: no byte cap applies
            self.item_bytes.observe(chunk[0])
        task = self.task(self.next_start, chunk, self.report_every())
        self.next_start += len(chunk)
        cap = self.max_chunk_items()
        if len(chunk) > cap:  # sized before this item's bytes were known: the rest waits
            self.pending.appendleft(self.subtask(task, cap, None))
            task = self.subtask(task, 0, cap)
        self.exhausted = self.feeder.finished
        return task

    def max_chunk_items(self) -> int:
        """The most items a chunk read now may hold (by the caps, not by time)."""
        if self.whole:  # in the caller's process, on an input already in memory
            return sys.maxsize
        cap = self.item_bytes.items_within(MAX_CHUNK_BYTES)
        if self.sizer is None or self.sizer.adaptive:
            cap = min(cap, MAX_CHUNK_ITEMS)
        return cap

    def _size(self, limit: Optional[int]) -> int:
        assert self.sizer is not None, "start_sizer() before reading the input"
        remaining = None if self.total is None else self.total - self.next_start
        if remaining is not None and remaining <= 0:
            # The input holds more than its len() said (or we are at its end): from here
            # on its length is unknown, every item still runs (only sizing used it).
            remaining = None
        size = self.sizer.next_size(remaining)
        if self.skip:
            size = min(size, self.skip[0][0] - self.next_start)
        if limit is not None:
            size = min(size, limit)
        # A chunksize the user fixed is kept, unless it holds too many bytes.
        return min(size, self.max_chunk_items())

    def _read_past_finished(self) -> None:
        while self.skip and self.skip[0][0] <= self.next_start:
            _begin, end = self.skip.popleft()  # finished by a previous run
            self.feeder.take_exactly(end - self.next_start)
            self.next_start = end

