"""The chunker: every position is cut exactly once, in order, around skip ranges and limits."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from hypothesis import given
from hypothesis import strategies as st

from amorsize.run.chunker import MAX_CHUNK_BYTES, MAX_CHUNK_ITEMS, ByteEstimate, Chunker, encoded_size


def next_ready(chunker: Chunker, limit: Any = None, *, read: bool = True) -> Any:
    """``chunker.next_task``, waiting while an unknown-length input (read by the feeder
    thread) has no item ready yet, as the dispatcher does."""
    task = chunker.next_task(limit, read=read)
    while task is None and chunker.starved:
        chunker.feeder.wait(1.0)
        task = chunker.next_task(limit, read=read)
    return task



@st.composite
def runs(draw: st.DrawFn) -> Tuple[int, List[Tuple[int, int]], List[Optional[int]], bool]:
    total = draw(st.integers(0, 200))
    cuts = sorted(set(draw(st.lists(st.integers(0, total), max_size=8))))
    skips = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]
    limits = draw(st.lists(st.one_of(st.none(), st.integers(1, 9)), min_size=1, max_size=5))
    sized = draw(st.booleans())
    return total, skips, limits, sized


@given(runs(), st.integers(1, 50))
def test_positions_are_cut_once_in_order_around_skip_ranges(run, first: int) -> None:
    total, skips, limits, sized = run
    chunker = Chunker(iter(range(total)), total if sized else None)
    chunker.skip.extend(skips)
    chunker.start_sizer(first, n_jobs=2, target=0.2, adaptive=True)
    seen: List[int] = []
    turn = 0
    while True:
        limit = limits[turn % len(limits)]
        turn += 1
        task = next_ready(chunker, limit)
        if task is None:
            break
        assert task.items, "no empty chunk"
        assert limit is None or len(task.items) <= limit
        assert task.items == list(range(task.start, task.start + len(task.items)))
        seen.extend(task.items)
    skipped = {p for a, b in skips for p in range(a, b)}
    assert seen == [p for p in range(total) if p not in skipped]


@given(st.integers(2, 30), st.data())
def test_work_queued_again_runs_before_new_input(n: int, data: st.DataObject) -> None:
    chunker = Chunker(iter(range(1000)), None)
    chunker.start_sizer(n, n_jobs=1, target=0.2, adaptive=False)
    task = next_ready(chunker)
    assert task is not None and len(task.items) == n
    position = data.draw(st.integers(0, n - 1))
    chunker.again(chunker.subtask(task, 0, position), chunker.subtask(task, position + 1, None))
    rerun: List[int] = []
    while chunker.pending:
        queued = chunker.next_task()
        assert queued is not None
        rerun.extend(queued.items)
    assert rerun == [x for x in task.items if x != position]
    following = next_ready(chunker)
    assert following is not None and following.start == n  # then new input, where it stopped
    assert chunker.next_task(read=False) is None  # nothing queued: no input is read


# --- memory bounds ------------------------------------------------------------------


def test_cheap_items_are_capped_by_items_however_fast_they_run() -> None:
    # Before the cap, a sizer fed tiny per-item times grew chunks to MAX_CHUNKSIZE.
    chunker = Chunker(iter(range(3_000_000)), None)
    chunker.start_sizer(1_000_000, n_jobs=2, target=0.2, adaptive=True)
    for _ in range(4):
        task = next_ready(chunker)
        assert task is not None
        assert len(task.items) <= MAX_CHUNK_ITEMS
        chunker.observe(len(task.items), 1e-9 * len(task.items))


def test_large_items_are_capped_by_encoded_size_from_the_first_chunk() -> None:
    item = b"x" * (1 << 20)
    chunker = Chunker(iter([item] * 100), 100)
    chunker.start_sizer(100, n_jobs=2, target=0.2, adaptive=False)  # even a fixed chunksize
    task = next_ready(chunker)
    assert task is not None
    assert 1 <= len(task.items) <= MAX_CHUNK_BYTES // len(item)


def test_a_fixed_chunksize_of_small_items_is_kept() -> None:
    size = MAX_CHUNK_ITEMS * 2
    chunker = Chunker(iter(range(size * 2)), size * 2)  # sized: read directly, whole chunks
    chunker.start_sizer(size, n_jobs=2, target=0.2, adaptive=False)
    task = next_ready(chunker)
    assert task is not None and len(task.items) == size


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=40))
def test_byte_estimate_never_underestimates_the_latest_larger_sample(sizes: List[int]) -> None:
    estimate = ByteEstimate()
    for size in sizes:
        before = estimate.per_item
        estimate.observe(b"x" * size)
        encoded = encoded_size(b"x" * size)
        assert estimate.per_item >= min(encoded, before)
        if encoded >= before:
            assert estimate.per_item == encoded
