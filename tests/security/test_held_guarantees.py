"""What held in the issue 13 probes, kept as regression tests.

* a SIGKILLed remover never undoes a removal;
* nothing is unpickled from disk without the opt-in, on any read path;
* a wrong authkey is refused promptly;
* hundreds of bad connections (garbage, 2 GiB length prefixes, silence) before
  authentication do not stop good clients, on the manager socket and the workers' lane.

(0 acknowledged adds lost over SIGKILLs with torn tails: tests/faults/test_dlq_kill.py;
concurrent writers with removals: tests/faults/test_dlq_writers.py; parent SIGKILL
leaves no manager: tests/faults/test_shared_faults.py.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
from typing import Any, List

import psutil
import pytest

from amorsize import (
    AmorsizeError,
    Checkpoint,
    DeadLetterQueue,
    DLQFormat,
    DLQPolicy,
    SharedDeadLetterQueue,
    SharedDLQUnavailableError,
    execute,
    replay_failed_items,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("no_leaked_children")


# --- a SIGKILLed remover ---------------------------------------------------------------

REMOVER = r"""
import sys
from amorsize import DeadLetterQueue, DLQPolicy

queue = DeadLetterQueue(DLQPolicy(directory=sys.argv[1], max_entries=0, fsync="never"))
for entry in queue.get_entries():
    queue.remove([entry.entry_id])
    print(entry.entry_id, flush=True)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("acked_before_kill", [5, 40, 120])
def test_a_sigkilled_remover_never_undoes_a_removal(tmp_path, acked_before_kill):
    directory = str(tmp_path / "dlq")
    queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    ids = [queue.add({"n": n, "pad": "r" * (n * 97 % 3000)}, ValueError(n)).entry_id for n in range(300)]
    queue.close()
    proc = subprocess.Popen([sys.executable, "-c", REMOVER, directory], stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    removed: List[str] = []
    try:
        assert proc.stdout is not None
        while len(removed) < acked_before_kill:
            line = proc.stdout.readline()
            assert line, "the remover exited before it was killed"
            removed.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)
        removed.extend(line.decode().strip() for line in proc.stdout.read().split(b"\n")[:-1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a compaction is atomic: no torn record either
        reopened = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    left = [e.entry_id for e in reopened.get_entries()]
    reopened.close()
    assert not set(removed) & set(left), "an acknowledged removal was undone"
    in_flight = ids[len(removed)] if len(removed) < len(ids) else None
    assert [i for i in ids if i not in removed and i != in_flight] == [i for i in left if i != in_flight]


# --- no unpickling without the opt-in ------------------------------------------------------


class Trap:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amorsize", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))


def identity(x: Any) -> Any:
    return x


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", [DLQFormat.JSON, DLQFormat.PICKLE])
def test_nothing_is_unpickled_without_the_opt_in(tmp_path, fmt):
    marker = str(tmp_path / "UNPICKLED")
    directory = str(tmp_path / "dlq")
    writer = DeadLetterQueue(DLQPolicy(directory=directory, format=fmt))
    trap = writer.add(Trap(marker), ValueError("trap"), metadata={"t": Trap(marker)})
    writer.add("plain", KeyError("plain"))
    writer.close()
    assert not os.path.exists(marker)
    no_pickle = DLQPolicy(directory=directory, format=fmt, allow_pickle=False)

    paths = []

    def path(name: str):
        def register(func):
            paths.append((name, func))
            return func
        return register

    @path("open, read, filter, summary")
    def _() -> None:
        queue = DeadLetterQueue(no_pickle)
        queue.get_entries()
        queue.filter(predicate=lambda e: bool(str(e.item)))
        queue.get_summary()
        queue.close()

    @path("save, load, update, remove")
    def _() -> None:
        queue = DeadLetterQueue(no_pickle)
        copy = queue.save(str(tmp_path / "copy.jsonl"))
        queue.load(copy)
        queue.update(queue.get_entries())
        queue.remove([trap.entry_id + "-nothing"])
        queue.save()
        queue.close()

    @path("replay refuses")
    def _() -> None:
        queue = DeadLetterQueue(no_pickle)
        try:
            replay_failed_items(queue, identity)
        except AmorsizeError:
            pass
        queue.close()

    @path("shared queue")
    def _() -> None:
        with SharedDeadLetterQueue(no_pickle) as shared:
            shared.get_entries()
            shared.get_summary()
            shared.filter(error_type="ValueError")

    for name, run in paths:
        run()
        assert not os.path.exists(marker), f"unpickled by: {name}"
    for args in (("summary",), ("list",), ("list", "--json"), ("show", trap.entry_id),
                 ("show", trap.entry_id, "--json"), ("export", "--to", str(tmp_path / "e.jsonl")),
                 ("export", "--to", str(tmp_path / "e.csv")), ("purge", "--grep", "trap"),
                 ("replay", "--func", "json:dumps", "--dry-run"), ("replay", "--func", "json:dumps")):
        done = run_cli("dlq", args[0], directory, *args[1:])
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert not os.path.exists(marker), f"unpickled by: amorsize dlq {' '.join(args)}"
    # The control: with the opt-in the payload really runs, so the checks above could fail.
    DeadLetterQueue(DLQPolicy(directory=directory, format=fmt, allow_pickle=True)).close()
    assert os.path.exists(marker)


def make_trap(path: str) -> Trap:
    return Trap(path)


@pytest.mark.timeout(120)
def test_checkpoint_results_are_not_unpickled_without_the_opt_in(tmp_path):
    marker = str(tmp_path / "UNPICKLED")
    checkpoint = str(tmp_path / "run.ckpt")
    items = [marker] * 3
    # In the caller's process: the traps are built here, never unpickled on the way back.
    execute(make_trap, items, backend="in_process",
            checkpoint=Checkpoint(checkpoint, every_items=1, keep=True))
    assert not os.path.exists(marker)
    with pytest.raises(AmorsizeError, match="allow_pickle"):
        execute(make_trap, items, backend="in_process", checkpoint=Checkpoint(checkpoint))
    assert not os.path.exists(marker)


# --- the manager's sockets before authentication ---------------------------------------------

BAD_CONNECTIONS = 400
SLOW = 20.0  # seconds: a generous bound for a loaded machine; a hang is what is being ruled out


def bad_client(address: Any, kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)  # blocking: waits while the listen backlog is full
    sock.settimeout(SLOW)
    try:
        if kind == 0:
            sock.sendall(b"\x00garbage\xff" * 64)
        elif kind == 1:
            sock.sendall(struct.pack("!i", 2**31 - 1))  # multiprocessing's 4-byte length prefix
        elif kind == 2:
            sock.sendall(struct.pack("!Q", 2**31) + b"x" * 16)  # the lane's 8-byte prefix: 2 GiB
        # kind 3: connect and say nothing
    except OSError:
        pass  # the server may already have dropped us: that is the point
    return sock


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


@pytest.mark.timeout(300)
def test_bad_connections_before_auth_do_not_stop_good_clients(tmp_path):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "dlq")) as queue:
        started = time.monotonic()
        with pytest.raises(SharedDLQUnavailableError, match="authkey"):
            SharedDeadLetterQueue.connect(queue.address, b"w" * 32)
        assert time.monotonic() - started < SLOW
        lane = queue._ingest_address
        addresses = [queue.address] + ([lane] if lane is not None else [])
        bad = [bad_client(addresses[i % len(addresses)], i // len(addresses) % 4)
               for i in range(BAD_CONNECTIONS)]
        try:
            started = time.monotonic()
            other = SharedDeadLetterQueue.connect(queue.address, queue.authkey)
            other.add("good", ValueError("good client"))
            other.close()
            assert not queue.capture(fail_odd)(1)  # a Failure, recorded through the lane
            assert time.monotonic() - started < SLOW
        finally:
            for sock in bad:
                sock.close()
        assert queue.size() == 2
        rss = psutil.Process(queue._manager._process.pid).memory_info().rss  # type: ignore[union-attr]
        assert rss < 1 << 30, f"the manager grew to {rss >> 20} MiB"
        assert json.dumps(queue.get_summary())
