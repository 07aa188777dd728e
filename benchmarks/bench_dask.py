"""Local process pool vs the Dask backend on a CPU-bound map of ~1 ms items.

    python benchmarks/bench_dask.py [--items 2000] [--ms 1.0] [--repeats 3] [--workers 2]

Rows (median of ``--repeats`` runs each):

* ``local``: ``execute(func, items, n_jobs=W)`` on the built-in process pool.
* ``dask (warm cluster)``: ``execute(..., backend=DaskBackend(client=c))`` on a
  2-worker loopback ``LocalCluster`` started once beforehand.
* ``dask (incl. cluster start)``: ``execute(..., backend="dask", n_jobs=W)``, which
  starts and closes its own cluster inside the call.
* ``cluster start``: starting that cluster and connecting a client, alone.
* ``per chunk``: ``--chunk-items`` no-op items at ``chunksize=1`` on each backend
  (warm cluster): seconds / chunks is what one chunk costs the engine and the
  backend, with no work in it (the constant docs/scaling.md uses).

PASS when the warm-cluster row is within ``TARGET_RATIO`` of the local row.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import time
from typing import Callable, List, Tuple

from amorsize import execute

#: The Dask backend should cost at most this much more than the local pool (warm cluster).
TARGET_RATIO = 1.5

_busy_seconds = 0.001


def busy(x: int) -> int:
    """Spin the CPU for ``_busy_seconds`` (no sleeping: a CPU-bound item)."""
    end = time.perf_counter() + _busy_seconds
    while time.perf_counter() < end:
        pass
    return x


def _seconds(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--ms", type=float, default=1.0, help="busy milliseconds per item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-items", type=int, default=1000,
                        help="no-op one-item chunks for the per-chunk cost")
    args = parser.parse_args(argv)

    from amorsize_dask import DaskBackend, start_local_cluster
    from distributed import Client

    global _busy_seconds
    _busy_seconds = args.ms / 1000.0
    items = list(range(args.items))
    expected = items
    workers = args.workers

    def local() -> None:
        assert execute(busy, items, n_jobs=workers) == expected

    def dask_on(backend: object) -> None:
        assert execute(busy, items, backend=backend) == expected

    def dask_own_cluster() -> None:
        assert execute(busy, items, backend="dask", n_jobs=workers) == expected

    # Runs are interleaved (local, warm dask, dask with start-up, ...) so that load
    # from elsewhere on a shared machine weighs on every row alike.
    local_times: List[float] = []
    warm_times: List[float] = []
    own_times: List[float] = []
    starts: List[float] = []
    chunk_local: List[float] = []
    chunk_dask: List[float] = []
    few = list(range(args.chunk_items))
    for _ in range(args.repeats):
        began = time.perf_counter()
        cluster = start_local_cluster(workers, silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=False, timeout=60)
        starts.append(time.perf_counter() - began)
        try:
            backend = DaskBackend(client=client)
            client.run(int)  # workers are up and answering
            local_times.append(_seconds(local))
            warm_times.append(_seconds(functools.partial(dask_on, backend)))
            chunk_local.append(_seconds(lambda: execute(
                int, few, n_jobs=workers, chunksize=1)) / len(few))
            chunk_dask.append(_seconds(lambda b=backend: execute(
                int, few, chunksize=1, backend=b)) / len(few))
        finally:
            client.close()
            cluster.close()
        own_times.append(_seconds(dask_own_cluster))
    rows: List[Tuple[str, float]] = [
        (f"local (n_jobs={workers})", statistics.median(local_times)),
        ("dask (warm cluster)", statistics.median(warm_times)),
        ("dask (incl. cluster start)", statistics.median(own_times)),
    ]
    base = rows[0][1]
    print(f"{args.items} items x {args.ms:g} ms busy loop, {workers} workers, median of {args.repeats}")
    print(f"{'backend':<28} {'seconds':>9} {'items/s':>9} {'vs local':>9}")
    for name, seconds in rows:
        print(f"{name:<28} {seconds:>9.3f} {args.items / seconds:>9.0f} {seconds / base:>8.2f}x")
    print(f"{'cluster start (alone)':<28} {statistics.median(starts):>9.3f}")
    per_local, per_dask = statistics.median(chunk_local), statistics.median(chunk_dask)
    print(f"per chunk ({args.chunk_items} no-op one-item chunks; local includes its pool start): "
          f"local {per_local * 1e3:.2f} ms, dask (warm) {per_dask * 1e3:.2f} ms, "
          f"dask overhead {(per_dask - per_local) * 1e3:.2f} ms per chunk")
    ratio = rows[1][1] / base
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"{verdict}: dask (warm cluster) / local = {ratio:.2f}x (target <= {TARGET_RATIO}x)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
