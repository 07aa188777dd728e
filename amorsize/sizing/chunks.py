"""ChunkSizer: keeps a running map's chunks near their target duration.

The dispatcher asks :meth:`ChunkSizer.next_size` before each chunk and reports each
finished chunk's compute time to :meth:`ChunkSizer.observe`; the sizer keeps an
exponentially weighted estimate of seconds per item and sizes chunks from it::

    observe(n, seconds) ─► per-item EWMA ─► next_size(remaining)
                           (fast up,         target / per_item, at most CHUNK_GROWTH_LIMIT x
                            slow down)       the last size, cut near the tail so every
                                             worker gets a share of the last items
"""

from __future__ import annotations

import math

from amorsize._validate import check_int, check_seconds, invalid_value

__all__ = ["MAX_CHUNKSIZE", "MIN_PER_ITEM_SECONDS", "ChunkSizer"]

# --- tuning constants -----------------------------------------------------------
#: Chunk sizes never exceed this (decide() uses the same bound).
MAX_CHUNKSIZE = 1_000_000
#: Floor on the per-item time, so a too-fast-to-measure func does not divide by zero
#: (decide() uses the same floor).
MIN_PER_ITEM_SECONDS = 1e-9
#: Growth limit per step, and EWMA weights of a new observation when items got
#: cheaper (slow, so one lucky chunk does not balloon the size) and when they got
#: costlier (fast, so a slow phase shrinks chunks at once).
CHUNK_GROWTH_LIMIT = 2
EWMA_ALPHA_CHEAPER = 0.3
EWMA_ALPHA_COSTLIER = 0.7
#: Tail: a chunk is at most remaining / (this · n_jobs).
TAIL_CHUNKS_PER_WORKER = 2
#: Tail balancing never cuts chunks below this much measured work: smaller ones
#: cost more in round trips than they save in balance (200k tiny items ended in
#: dozens of one-item chunks without it).
MIN_TAIL_CHUNK_SECONDS = 0.005


class ChunkSizer:
    """Adaptive chunk size for a running map; the dispatcher calls it once per chunk.

    It keeps an exponentially weighted estimate of seconds per item from the
    chunks that finished, and sizes the next chunk to take ``target_chunk_duration``:
    growing at most ``CHUNK_GROWTH_LIMIT`` times per step, shrinking at once, and
    near the end at most ``ceil(remaining / (TAIL_CHUNKS_PER_WORKER * n_jobs))`` so
    the last chunks spread over every worker. Both methods are O(1).
    """

    __slots__ = ("_adaptive", "_dispatched", "_initial", "_max", "_n_jobs", "_per_item",
                 "_size", "_target", "_total")

    def __init__(self, initial: int, *, n_jobs: int, target_chunk_duration: float = 0.2,
                 total_items: int | None = None, adaptive: bool = True,
                 max_chunksize: int = MAX_CHUNKSIZE) -> None:
        """Args:
            initial: size of the first chunks (and of every chunk if not adaptive).
            n_jobs: number of workers, for tail balancing.
            target_chunk_duration: seconds of work a chunk should hold.
            total_items: number of items, so ``remaining`` can be derived when omitted.
            adaptive: False when the user fixed the chunksize.
            max_chunksize: upper bound on any size.

        Raises:
            InvalidArgumentError: an argument is out of range.
        """
        self._max = check_int("max_chunksize", max_chunksize, 1)
        self._initial = min(check_int("initial", initial, 1), self._max)
        self._n_jobs = check_int("n_jobs", n_jobs, 1)
        self._target = check_seconds("target_chunk_duration", target_chunk_duration, positive=True)
        self._total = None if total_items is None else check_int("total_items", total_items, 0)
        self._adaptive = bool(adaptive)
        self._size = self._initial
        self._per_item: float | None = None
        self._dispatched = 0

    @property
    def adaptive(self) -> bool:
        """False when the user fixed the chunksize."""
        return self._adaptive

    @property
    def per_item_seconds(self) -> float | None:
        """The current estimate of seconds per item, or None before any observation."""
        return self._per_item

    def next_size(self, remaining: int | None = None) -> int:
        """Return the size of the next chunk (0 only when nothing remains).

        Args:
            remaining: items not yet dispatched, if known; derived from
                ``total_items`` when omitted.

        Raises:
            InvalidArgumentError: ``remaining`` is negative.
        """
        if remaining is None and self._total is not None:
            remaining = max(self._total - self._dispatched, 0)
        if remaining is not None and remaining < 0:
            raise invalid_value("remaining", remaining, "an int >= 0")
        if not self._adaptive:
            size = self._initial
        else:
            if self._per_item is not None:
                ideal = self._target / max(self._per_item, MIN_PER_ITEM_SECONDS)
                grown = self._size * CHUNK_GROWTH_LIMIT
                self._size = int(max(1, min(ideal, grown, self._max)))
            size = self._size
            if remaining is not None:
                # Ceiling division in ints: exact, and no float allocation.
                tail = -(-remaining // (TAIL_CHUNKS_PER_WORKER * self._n_jobs))
                if self._per_item is not None:
                    floor = int(MIN_TAIL_CHUNK_SECONDS / max(self._per_item, MIN_PER_ITEM_SECONDS))
                    tail = max(tail, floor)
                size = min(size, max(1, tail))
        if remaining is not None:
            size = min(size, remaining)
        self._dispatched += size
        return size

    def observe(self, n_items: int, seconds: float) -> None:
        """Record a finished chunk: its size and its compute time inside the worker.

        Raises:
            InvalidArgumentError: ``n_items`` < 1, or ``seconds`` negative or not finite.
        """
        if n_items < 1:
            raise invalid_value("n_items", n_items, "an int >= 1")
        if not 0.0 <= seconds < math.inf:
            raise invalid_value("seconds", seconds, "a finite number >= 0")
        per_item = seconds / n_items
        if self._per_item is None:
            self._per_item = per_item
        else:
            alpha = EWMA_ALPHA_COSTLIER if per_item > self._per_item else EWMA_ALPHA_CHEAPER
            self._per_item += alpha * (per_item - self._per_item)
