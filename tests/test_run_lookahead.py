"""The dispatcher bounds what it holds: items and estimated bytes in flight plus in the reorder buffer."""

from __future__ import annotations

from typing import Any, List, Optional

import amorsize
from amorsize.backends import ChunkDone, ChunkResult, ChunkSpec, ChunkTask
from amorsize.run.chunker import (
    LOOKAHEAD_BYTES_PER_WORKER,
    LOOKAHEAD_ITEMS_PER_WORKER,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_ITEMS,
)

WIDTH = 2


class HeadLastPool:
    """Finishes every chunk at once except the one at position 0, held while others can come.

    So results pile up in the reorder buffer until the dispatcher stops reading input.
    Chunks report a tiny compute time, so adaptive sizing grows them as fast as it may.
    """

    size = WIDTH

    def __init__(self, spec: ChunkSpec) -> None:
        self.spec = spec
        self.queued: List[ChunkTask] = []

    def idle_count(self) -> int:
        return WIDTH - len(self.queued)

    def busy_count(self) -> int:
        return len(self.queued)

    def submit(self, task: ChunkTask) -> None:
        self.queued.append(task)

    def wait(self, timeout: Optional[float]) -> List[Any]:
        ready = [t for t in self.queued if t.start != 0] or self.queued
        self.queued = [t for t in self.queued if t not in ready]
        return [ChunkDone(t, ChunkResult(t.chunk_id, t.start, [self.spec.func(x) for x in t.items],
                                         [], 1e-9 * len(t.items))) for t in ready]

    def close(self, *, kill: bool = False) -> None:
        self.queued = []


class HeadLastBackend:
    name = "head-last"
    chooses_width = False

    def open(self, spec: ChunkSpec, *, n_jobs: Optional[int], timeout: Optional[float],
             start_method: Optional[str]) -> HeadLastPool:
        return HeadLastPool(spec)


def _max_held(items: Any, n: int, **options: Any) -> int:
    read = consumed = held = 0

    def source() -> Any:
        nonlocal read
        for item in items:
            read += 1
            yield item

    for _value in amorsize.imap(_same, source(), n_jobs=WIDTH, backend=HeadLastBackend(), **options):
        consumed += 1
        held = max(held, read - consumed)
    assert consumed == n
    return held


def _same(x: Any) -> Any:
    return x


def test_cheap_items_held_are_bounded_in_items() -> None:
    n = 1_500_000
    held = _max_held(range(n), n, chunksize=None, dry_run=False)
    # One chunk may overshoot the bound; before the bound, chunks grew towards 1M items
    # and up to 4 per worker waited in the reorder buffer.
    assert held <= LOOKAHEAD_ITEMS_PER_WORKER * WIDTH + MAX_CHUNK_ITEMS


def test_large_items_held_are_bounded_in_bytes() -> None:
    size = 256 << 10
    n = 600
    held = _max_held((b"x" * size for _ in range(n)), n, chunksize=64)
    # Input and result each take ``size`` bytes per item; one chunk may overshoot.
    assert held * size <= LOOKAHEAD_BYTES_PER_WORKER * WIDTH + MAX_CHUNK_BYTES
