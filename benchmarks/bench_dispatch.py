"""The dispatcher alone: how many chunks and items per second one parent can route.

    python benchmarks/bench_dispatch.py            # 2,000,000 items per row, best of 3
    python benchmarks/bench_dispatch.py --quick    # 400,000 items per row

``execute()`` runs against a fake backend that implements the public
:class:`amorsize.backends.Pool` protocol and does no work: ``submit`` queues the
chunk, ``wait`` hands back every queued chunk as finished, with the items as their
values (and, for the failing rows, a DLQ entry and a Failure for 10% of them). The
time the fake pool spends building those results is measured and subtracted, so
the figure is the parent's own cost: chunking the input, the in-flight
bookkeeping, accepting results, routing failures to the DLQ (an in-memory
``DeadLetterQueue``) and putting results in order.

Rows: small chunks (100 items: the per-chunk cost) and large chunks (10,000 items:
the per-item cost), each without a DLQ, with a DLQ and no failures, and with a DLQ
and 10% failing. From the per-chunk cost it prints the largest worker count one
parent keeps busy at the default target chunk duration (workers =
target seconds x chunks/s). Targets (printed, not asserted): >= 20,000 chunks/s and
>= 2,000,000 items/s routed. Times are process CPU time of the parent (it is the
only process), so other load on the machine moves them little.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from typing import Any, Deque, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import amorsize
from amorsize import DeadLetterQueue, DLQPolicy
from amorsize.backends import ChunkDone, ChunkResult, ChunkSpec, ChunkTask
from amorsize.dlq.entry import DLQEntry
from amorsize.failure import failure_of
from amorsize.run.options import TARGET_CHUNK_SECONDS

TARGET_CHUNKS = 20_000
TARGET_ITEMS = 2_000_000
#: Workers the fake pool pretends to have: chunks in flight at once.
FAKE_WIDTH = 64


class FakePool:
    """A pool of ``FAKE_WIDTH`` slots whose chunks finish the moment they are waited for."""

    size = FAKE_WIDTH

    def __init__(self, fail_every: int) -> None:
        self._queued: Deque[ChunkTask] = collections.deque()
        self._fail_every = fail_every
        self.own_seconds = 0.0  # time spent here, subtracted from the dispatcher's

    def idle_count(self) -> int:
        return FAKE_WIDTH - len(self._queued)

    def busy_count(self) -> int:
        return len(self._queued)

    def submit(self, task: ChunkTask) -> None:
        self._queued.append(task)

    def wait(self, timeout: Optional[float]) -> List[Any]:
        began = time.process_time()
        events = [ChunkDone(task, self._result(task)) for task in self._queued]
        self._queued.clear()
        self.own_seconds += time.process_time() - began
        return events

    def _result(self, task: ChunkTask) -> ChunkResult:
        items, every = task.items, self._fail_every
        if not every:
            return ChunkResult(task.chunk_id, task.start, items, [], 1e-4)
        values = list(items)
        failures = []
        now = time.time()
        for position in range(0, len(items), every):
            entry = DLQEntry(None, "ValueError", "bad item", now,
                             metadata={"index": task.start + position})
            failures.append(entry)
            values[position] = failure_of(entry)
        return ChunkResult(task.chunk_id, task.start, values, failures, 1e-4)

    def close(self, *, kill: bool = False) -> None:
        self._queued.clear()


class FakeBackend:
    """Opens one :class:`FakePool`; keeps it so the benchmark can read its own time."""

    name = "fake"
    chooses_width = False

    def __init__(self, fail_every: int) -> None:
        self.fail_every = fail_every
        self.pool: Optional[FakePool] = None

    def open(self, spec: ChunkSpec, *, n_jobs: Optional[int], timeout: Optional[float],
             start_method: Optional[str]) -> FakePool:
        self.pool = FakePool(self.fail_every)
        return self.pool


def identity(x: Any) -> Any:
    return x


def route(n: int, chunksize: int, dlq: bool, fail_every: int) -> Dict[str, float]:
    """One run; the parent's CPU seconds, with the fake pool's own time taken out."""
    backend = FakeBackend(fail_every)
    queue = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0)) if dlq else None
    began = time.process_time()
    wall = time.perf_counter()
    count = 0
    for _ in amorsize.imap(identity, range(n), n_jobs=FAKE_WIDTH, chunksize=chunksize,
                           backend=backend, dlq=queue):
        count += 1
    wall = time.perf_counter() - wall
    cpu = time.process_time() - began
    assert count == n, (count, n)
    assert backend.pool is not None
    if queue is not None:
        expected = len(range(0, n, fail_every)) if fail_every else 0
        assert len(queue) == expected, (len(queue), expected)
    own = cpu - backend.pool.own_seconds
    return {"cpu": own, "wall": wall, "chunks": -(-n // chunksize), "items": n}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400,000 items per row")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = 400_000 if args.quick else 2_000_000
    print("Dispatcher cost in the parent, fake no-work pool of width", FAKE_WIDTH)
    print(f"{os.uname().sysname} {os.uname().release}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores; load average before: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{n:,} items per row, imap (ordered) with fixed chunksize; best of {args.repeats} "
          "(parent CPU seconds minus the fake pool's)")
    print()
    header = (f"{'chunk':>7} {'dlq':>5} {'failing':>8} {'cpu s':>8} {'wall s':>8} "
              f"{'chunks/s':>11} {'items/s':>12} {'us/chunk':>9} {'ns/item':>8}")
    print(header)
    print("-" * len(header))
    verdicts = []
    per_chunk_worst = 0.0
    for chunksize in (100, 10_000):
        for dlq, fail_every in ((False, 0), (True, 0), (True, 10)):
            runs = [route(n, chunksize, dlq, fail_every) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["cpu"])
            chunks_s = best["chunks"] / best["cpu"]
            items_s = best["items"] / best["cpu"]
            print(f"{chunksize:>7,} {('yes' if dlq else 'no'):>5} {('10%' if fail_every else '0%'):>8} "
                  f"{best['cpu']:>8.3f} {best['wall']:>8.3f} {chunks_s:>11,.0f} {items_s:>12,.0f} "
                  f"{1e6 / chunks_s:>9.1f} {1e9 / items_s:>8.0f}")
            if chunksize == 100 and not fail_every:
                verdicts.append(("chunks/s", chunks_s, TARGET_CHUNKS, dlq))
                per_chunk_worst = max(per_chunk_worst, 1 / chunks_s)
            if chunksize == 10_000 and not fail_every:
                verdicts.append(("items/s", items_s, TARGET_ITEMS, dlq))
    print()
    workers = TARGET_CHUNK_SECONDS / per_chunk_worst
    print(f"One parent keeps at most {workers:,.0f} workers busy at the default target chunk "
          f"duration of {TARGET_CHUNK_SECONDS} s ({TARGET_CHUNK_SECONDS} s x "
          f"{1 / per_chunk_worst:,.0f} chunks/s, the slower of the 100-item rows without failures)")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    passed = 0
    for name, value, target, dlq in verdicts:
        ok = value >= target
        passed += ok
        print(f"{name} {'with' if dlq else 'without'} DLQ: {value:,.0f} >= {target:,}: "
              f"{value / target:.2f}x target: {'PASS' if ok else 'FAIL'}")
    print(f"{passed}/{len(verdicts)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
