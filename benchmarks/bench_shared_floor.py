"""The floor under bench_shared.py: what recording a failure can cost on this machine at best.

    python benchmarks/bench_shared_floor.py            # 40,000 records per mode
    python benchmarks/bench_shared_floor.py -n 100000

Two ``multiprocessing.Pool`` workers each record N/2 ~500-byte lines (the size of a
failure's journal line), with no Python work around them, three ways:

* **ack**: send the line on a unix socket; one server process (a selector loop, as
  the manager's lane) reads every ready connection, does one ``os.write`` of all
  the lines to an ``O_APPEND`` file, acks each; the worker waits for its ack.
  The cost of "the manager has written it before the hook returns".
* **append**: the worker appends the line to the shared journal itself, as the
  capture hook did in sessions 3-4: ``flock``, ``fstat``, ``pread`` of the last
  byte, ``write``, unlock (the journal's multi-writer protocol), no message to anyone.
* **own**: the worker appends the line to a file of its own with one ``write``, as
  the capture hook does now (:mod:`amorsize.dlq.inbox`; the manager moves the lines
  into the journal later, in bulk).
* **send**: the worker sends the line and does not wait (no durability at all):
  the cost of telling the manager anything per failure.

Prints records per second (wall) and CPU per record of the workers, the server
and the parent (psutil), so the capture hook's own figures can be read against it.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import selectors
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, List, Optional

import psutil

LINE = b'{"entry_id":"' + b"0" * 32 + b'","v":1,"item":' + b"1" * 440 + b"}\n"
_state: dict = {}


def _server(path: str, journal: str, ready: Any, acks: bool) -> None:
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    ready.set()
    while True:
        got, peers = [], []
        for key, _ in selector.select():
            sock: Any = key.fileobj
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                continue
            data = sock.recv(1 << 16)
            if not data:
                selector.unregister(sock)
                sock.close()
                continue
            got.append(data)
            peers.append(sock)
        if got:
            os.write(fd, b"".join(got))
            if acks:
                for sock in peers:
                    sock.send(b"\x01")


def _record(args: Any) -> None:
    mode, path, journal, count = args
    if "sock" not in _state and mode not in ("append", "own"):
        _state["sock"] = socket.socket(socket.AF_UNIX)
        _state["sock"].connect(path)
    if "fd" not in _state and mode == "append":
        _state["fd"] = os.open(journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        _state["lock"] = os.open(journal + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    if "fd" not in _state and mode == "own":
        _state["fd"] = os.open(f"{journal}.{os.getpid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for _ in range(count):
        if mode == "own":
            os.write(_state["fd"], LINE)
        elif mode == "append":
            fd, lock = _state["fd"], _state["lock"]
            fcntl.flock(lock, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size:
                os.pread(fd, 1, size - 1)
            os.write(fd, LINE)
            fcntl.flock(lock, fcntl.LOCK_UN)
        else:
            _state["sock"].sendall(LINE)
            if mode == "ack":
                _state["sock"].recv(1)


def run(mode: str, n: int, directory: str) -> str:
    path, journal = os.path.join(directory, f"{mode}.sock"), os.path.join(directory, f"{mode}.jsonl")
    server = None
    pids = [os.getpid()]
    if mode not in ("append", "own"):
        ready = multiprocessing.Event()
        server = multiprocessing.Process(target=_server, args=(path, journal, ready, mode == "ack"),
                                         daemon=True)
        server.start()
        ready.wait()
        pids.append(server.pid or 0)
    try:
        with multiprocessing.Pool(2) as pool:
            procs = [psutil.Process(p) for p in pids + [w.pid for w in pool._pool]]  # type: ignore[attr-defined]
            pool.map(_record, [(mode, path, journal, 10)] * 2, chunksize=1)  # connect, warm up
            tasks = [(mode, path, journal, n // 200)] * 200
            before = [sum(p.cpu_times()[:2]) for p in procs]
            started = time.perf_counter()
            pool.map(_record, tasks, chunksize=1)
            wall = time.perf_counter() - started
            cpu = [sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before)]
    finally:
        if server is not None:
            server.terminate()
            server.join()
    total = n // 200 * 200
    parent, rest = cpu[0], cpu[1:]
    served = rest.pop(0) if server is not None else 0.0
    per = 1e6 / total
    return (f"{mode:<7}{total / wall:>12,.0f}/s   CPU per record: workers {sum(rest) * per:5.1f} us, "
            f"server {served * per:5.1f} us, parent {parent * per:4.1f} us")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-n", type=int, default=40_000, help="records per mode")
    args = parser.parse_args(argv)
    print(f"Pool(2), {len(LINE)}-byte lines, {args.n:,} records per mode; "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    directory = tempfile.mkdtemp(prefix="amorsize-floor-")
    try:
        for mode in ("ack", "append", "own", "send"):
            print(run(mode, args.n, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
