"""I/O-bound work: amorsize's async and threads paths against the bare tools, side by side.

    python benchmarks/bench_io.py                 # about a minute
    python benchmarks/bench_io.py --requests 1000 # quicker

REQUESTS GETs to the local service (tests/_http_service.py, run in its own process
so it does not share this one's GIL) with LATENCY seconds of latency each, made
with **httpx** in every row (``httpx.AsyncClient`` in the async rows, one shared
``httpx.Client`` in the thread rows, one per process in the process row). Install
``sniffio`` beside it (the ``bench`` extra does): without it httpcore retries a
failing ``import sniffio`` on every async request, a path search each time.

* amorsize async (``concurrency=100``) vs ``asyncio.gather`` + ``Semaphore(100)``:
  target <= 1.1x;
* amorsize threads (``n_jobs=64``) vs ``ThreadPoolExecutor(64).map``: <= 1.1x;
* both again with ERROR_SHARE of the requests answered 500: <= 1.15x, and every
  failure (as counted by the server) in amorsize's DLQ;
* for reference: amorsize processes (defaults), mpire with threads, joblib threading.

Prints PASS/FAIL with ratios and requests per second; each row is the best of
--repeat runs. Asserts nothing (performance is measured, not tested).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]

import httpx  # noqa: E402
from _http_service import HTTPService  # noqa: E402
from _io_client import afetch, fetch, safe_fetch  # noqa: E402

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure  # noqa: E402

REQUESTS = 5000
LATENCY = 0.02
CONCURRENCY = 100
THREADS = 64
ERROR_SHARE = 0.02
TARGET = 1.10
TARGET_WITH_ERRORS = 1.15
LISTEN_BACKLOG = 1024

# --- the service, in a child process ---------------------------------------------------


def _serve(conn: Any, error_share: float) -> None:
    # socketserver listens with a backlog of 5: a hundred clients connecting at once
    # would see dropped SYNs and one-second retransmits, measuring the kernel, not us.
    ThreadingHTTPServer.request_queue_size = LISTEN_BACKLOG
    service = HTTPService(rate=1e9, burst=10**9, latency=LATENCY, error_share=error_share).start()
    conn.send(service.url)
    while True:
        command = conn.recv()
        if command == "stop":
            break
        conn.send(service.statuses())  # "stats": counts so far, then forget them
        with service._lock:
            service.hits.clear()
    service.stop()


class Service:
    """The HTTP service in its own process; ``statuses()`` reads and resets its counts."""

    def __init__(self, error_share: float) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(child, error_share), daemon=True)
        self._process.start()
        self.url = self._conn.recv()

    def statuses(self) -> Dict[int, int]:
        self._conn.send("stats")
        return dict(self._conn.recv())

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(10)


# --- rows ---------------------------------------------------------------------------------


def bare_gather(urls: List[str]) -> int:
    async def main() -> List[Any]:
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY), timeout=30) as c:
            async def one(url: str) -> Any:
                async with semaphore:
                    response = await c.get(url)
                    response.raise_for_status()
                    return response.status_code
            return await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)
    return sum(isinstance(v, BaseException) for v in asyncio.run(main()))


def bare_threads(urls: List[str]) -> int:
    with ThreadPoolExecutor(THREADS) as pool:
        return sum(isinstance(v, BaseException) for v in pool.map(safe_fetch, urls))


def _amorsize(func: Callable[[str], Any], **options: Any) -> Callable[[List[str]], int]:
    def run(urls: List[str]) -> int:
        dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
        values = execute(func, urls, dlq=dlq, **options)
        failed = sum(1 for v in values if is_failure(v))
        assert failed == len(dlq.get_entries()), "a failure is missing from the DLQ"
        return failed
    return run


def mpire_threads(urls: List[str]) -> int:
    from mpire import WorkerPool
    with WorkerPool(n_jobs=THREADS, start_method="threading") as pool:
        return sum(isinstance(v, BaseException) for v in pool.map(safe_fetch, urls, progress_bar=False))


def joblib_threads(urls: List[str]) -> int:
    from joblib import Parallel, delayed
    values = Parallel(n_jobs=THREADS, backend="threading")(delayed(safe_fetch)(u) for u in urls)
    return sum(isinstance(v, BaseException) for v in values)


ROWS: List[Tuple[str, Callable[[List[str]], int]]] = [
    ("asyncio.gather + Semaphore(100)", bare_gather),
    # n_jobs=1: one loop with 100 in flight, like the bare row (n_jobs=None would let the
    # probe decide, and the client's first-call set-up can look like CPU-bound work).
    ("amorsize async (concurrency=100)", _amorsize(afetch, n_jobs=1, concurrency=CONCURRENCY)),
    ("ThreadPoolExecutor(64).map", bare_threads),
    ("amorsize threads (n_jobs=64)", _amorsize(fetch, backend="threads", n_jobs=THREADS)),
    ("amorsize processes (defaults)", _amorsize(fetch)),
    ("mpire threads (64)", mpire_threads),
    ("joblib threading (64)", joblib_threads),
]
COMPARED = [("amorsize async (concurrency=100)", "asyncio.gather + Semaphore(100)"),
            ("amorsize threads (n_jobs=64)", "ThreadPoolExecutor(64).map")]


def measure(service: Service, rows: List[Tuple[str, Callable[[List[str]], int]]], n: int,
            repeat: int) -> Dict[str, Tuple[float, int, int]]:
    """name -> (best seconds, failures the row saw, 500s the server sent in that run).

    Rounds are interleaved (every row once, then again), so a burst of load from
    elsewhere on the machine hurts every row alike rather than one.
    """
    urls = [f"{service.url}/item/{i}" for i in range(n)]
    best: Dict[str, Tuple[float, int, int]] = {}
    for round_ in range(repeat):
        for name, run in rows:
            service.statuses()
            start = time.perf_counter()
            failed = run(urls)
            seconds = time.perf_counter() - start
            sent = service.statuses().get(500, 0)
            print(f"  [{round_ + 1}/{repeat}] {name:<34} {seconds:7.2f} s {n / seconds:8.0f} req/s  "
                  f"failed {failed} (server 500s: {sent})", flush=True)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, failed, sent)
    return best


def report(title: str, results: Dict[str, Tuple[float, int, int]], n: int, target: float) -> List[str]:
    lines = [f"\n{title}", f"| {'row':<34} | {'seconds':>7} | {'req/s':>7} | {'failed':>6} | verdict |",
             f"|{'-' * 36}|{'-' * 9}|{'-' * 9}|{'-' * 8}|---------|"]
    verdicts = {}
    for ours, theirs in COMPARED:
        ratio = results[ours][0] / results[theirs][0]
        in_dlq = results[ours][1] == results[ours][2]
        ok = ratio <= target and in_dlq
        verdicts[ours] = f"{'PASS' if ok else 'FAIL'} {ratio:.2f}x (<= {target}x)" + (
            "" if in_dlq else f", DLQ {results[ours][1]} != server 500s {results[ours][2]}")
    for name, (seconds, failed, _sent) in results.items():
        lines.append(f"| {name:<34} | {seconds:7.2f} | {n / seconds:7.0f} | {failed:>6} | "
                     f"{verdicts.get(name, '')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"httpx {httpx.__version__}; {args.requests} requests, {LATENCY * 1000:.0f} ms latency; "
          f"{os.cpu_count()} cpus")
    lines: List[str] = []
    for share, title, target, rows in (
        (0.0, "no errors", TARGET, ROWS),
        (ERROR_SHARE, f"{ERROR_SHARE:.0%} of requests answered 500", TARGET_WITH_ERRORS,
         [r for r in ROWS if r[0] in {n for pair in COMPARED for n in pair}]),
    ):
        print(f"\n{title}:")
        service = Service(share)
        try:
            results = measure(service, rows, args.requests, args.repeat)
        finally:
            service.close()
        lines += report(title, results, args.requests, target)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
