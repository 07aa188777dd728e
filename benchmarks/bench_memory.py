"""Peak memory of imap() on long inputs: the caller and each worker, sampled while it runs.

    python benchmarks/bench_memory.py            # 20,000,000 tiny items, 2,000 items of 1 MB
    python benchmarks/bench_memory.py --quick    # 2,000,000 tiny items, 500 items of 1 MB

Workloads, 2 workers, the input a generator (so nothing is held up front):

* **tiny**: ``imap(inc, (i for i in range(N)))``, ``inc(x) = x + 1``;
* **1 MB**: ``imap(len, generator of 1 MB bytes objects)``.

A thread samples the resident set size (psutil) of the caller and of every child
every ``SAMPLE_SECONDS``; the table shows each one's peak, the caller's RSS before
the call, the throughput, and the *look-ahead held*: the largest number of items
read from the generator but not yet yielded to the consumer (in flight, waiting in
the reorder buffer, or cut into a chunk not yet sent). Targets (printed, not
asserted): tiny <= 80 MB peak in the caller, 1 MB <= 150 MB, tiny throughput
within 1.1x of ``--baseline`` items/s when given (the figure before this change).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil

import amorsize

MB = 1 << 20
SAMPLE_SECONDS = 0.01
TARGET_TINY_MB = 80
TARGET_LARGE_MB = 150
TARGET_THROUGHPUT_RATIO = 1.1


def inc(x: int) -> int:
    return x + 1


class Sampler:
    """Peak RSS per process (the caller and its children) while running."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.peaks: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except psutil.Error:
            pass
        for proc in procs:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if rss > self.peaks.get(proc.pid, 0):
                self.peaks[proc.pid] = rss

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class Counted:
    """Wraps a generator and counts how many items were read from it."""

    def __init__(self, source: Iterator[Any]) -> None:
        self.source = source
        self.read = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> Any:
        value = next(self.source)
        self.read += 1
        return value


def tiny_items(n: int) -> Iterator[int]:
    return (i for i in range(n))


def large_items(n: int) -> Iterator[bytes]:
    return (bytes([i % 256]) * MB for i in range(n))


def run(name: str, func: Any, source: Iterator[Any], n: int) -> Dict[str, Any]:
    counted = Counted(source)
    before = psutil.Process().memory_info().rss
    cpu_before = _cpu()
    held = consumed = 0
    began = time.perf_counter()
    with Sampler() as sampler:
        for _ in amorsize.imap(func, counted, n_jobs=2):
            consumed += 1
            ahead = counted.read - consumed
            if ahead > held:
                held = ahead
    wall = time.perf_counter() - began
    assert consumed == n, (consumed, n)
    me = os.getpid()
    workers = sorted((rss for pid, rss in sampler.peaks.items() if pid != me), reverse=True)
    return {"name": name, "n": n, "before": before, "caller": sampler.peaks.get(me, before),
            "workers": workers, "wall": wall, "cpu": _cpu() - cpu_before, "held": held}


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000,000 tiny items, 500 of 1 MB")
    parser.add_argument("--baseline", type=float, default=None,
                        help="tiny-case items/s before the change (CPU-time based), for the ratio")
    parser.add_argument("--only", choices=("tiny", "large"), default=None)
    args = parser.parse_args(argv)
    n_tiny, n_large = (2_000_000, 500) if args.quick else (20_000_000, 2_000)
    print("Peak RSS of imap() on a generator, 2 workers (psutil, sampled every "
          f"{SAMPLE_SECONDS * 1000:.0f} ms)")
    print(f"{os.uname().sysname} {os.uname().release}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores; load average before: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    rows = []
    if args.only in (None, "tiny"):
        rows.append(run("tiny", inc, tiny_items(n_tiny), n_tiny))
    if args.only in (None, "large"):
        rows.append(run("1 MB", len, large_items(n_large), n_large))
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    header = (f"{'workload':<9}{'items':>12}{'before MB':>10}{'caller MB':>10}{'workers MB':>16}"
              f"{'held items':>12}{'wall s':>8}{'cpu s':>8}{'items/cpu-s':>13}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for r in rows:
        workers = "/".join(f"{w / MB:.0f}" for w in r["workers"][:4]) or "-"
        rate = r["n"] / r["cpu"]
        print(f"{r['name']:<9}{r['n']:>12,}{r['before'] / MB:>10.0f}{r['caller'] / MB:>10.0f}"
              f"{workers:>16}{r['held']:>12,}{r['wall']:>8.2f}{r['cpu']:>8.2f}{rate:>13,.0f}")
        target = TARGET_TINY_MB if r["name"] == "tiny" else TARGET_LARGE_MB
        peak = r["caller"] / MB
        verdicts.append((f"{r['name']}: caller peak {peak:.0f} MB <= {target} MB "
                         f"({peak / target:.2f}x)", peak <= target))
        if r["name"] == "tiny" and args.baseline:
            ratio = args.baseline / rate
            verdicts.append((f"tiny throughput: {rate:,.0f} items/cpu-s vs {args.baseline:,.0f} before "
                             f"(time ratio {ratio:.2f}x <= {TARGET_THROUGHPUT_RATIO})",
                             ratio <= TARGET_THROUGHPUT_RATIO))
    print()
    for text, ok in verdicts:
        print(f"{text}: {'PASS' if ok else 'FAIL'}")
    print(f"{sum(ok for _, ok in verdicts)}/{len(verdicts)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
