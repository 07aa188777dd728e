"""SIGKILL a process in the middle of adding: every add() that returned is on disk.

SIGKILL is not a power loss: what write(2) handed to the kernel survives the
process, so this holds with fsync="never" too. (Power loss is covered by fsync,
which these tests cannot simulate.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest

from amorsize import DeadLetterQueue, DLQPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prints each entry_id after add() returned for it, one flushed line each. Records vary
# in size (up to ~12 KB) so writes cross page boundaries, where a kill can tear them.
WRITER = r"""
import sys
from amorsize import DeadLetterQueue, DLQPolicy

directory, fsync, fmt, max_entries = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
queue = DeadLetterQueue(
    DLQPolicy(directory=directory, fsync=fsync, format=fmt, max_entries=max_entries)
)
try:
    raise ValueError("boom")
except ValueError as exc:
    error = exc
out = sys.stdout
n = 0
while True:
    entry = queue.add({"n": n, "pad": "x" * (n * 389 % 12000)}, error, metadata={"n": n})
    out.write(entry.entry_id + "\n")
    out.flush()
    n += 1
"""


def kill_mid_stream(directory, *, fsync, fmt, max_entries, acked_before_kill, delay) -> list:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, os.fspath(directory), fsync, fmt, str(max_entries)],
        stdout=subprocess.PIPE,
        env=env,
    )
    acked: list = []
    try:
        assert proc.stdout is not None
        while len(acked) < acked_before_kill:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.decode().strip())
        time.sleep(delay)  # land the kill anywhere in the add/print cycle
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the writer died before it was killed"
    # A line cut short by the kill was not acknowledged.
    acked.extend(line.decode() for line in rest.split(b"\n")[:-1])
    return acked


def check_survivors(directory, acked, *, fmt, max_entries) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a torn, unacknowledged last record
        queue = DeadLetterQueue(DLQPolicy(directory=directory, format=fmt, max_entries=0,
                                          allow_pickle=True))  # strict: no corruption allowed
    ids = {e.entry_id for e in queue.get_entries()}
    # With pruning, one add may have finished without being acknowledged (killed before
    # it printed): it counts toward max_entries and pushes out the oldest acknowledged one.
    expected = acked[-(max_entries - 1):] if max_entries else acked
    missing = [i for i in expected if i not in ids]
    assert not missing, f"{len(missing)} acknowledged entries lost, first {missing[:3]}"
    # Appending after the kill cuts any torn tail; nothing earlier is disturbed.
    after = queue.add("after the kill", ValueError("again")).entry_id
    queue.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = DeadLetterQueue(DLQPolicy(directory=directory, format=fmt, max_entries=0,
                                             allow_pickle=True))
    reopened_ids = [e.entry_id for e in reopened.get_entries()]
    reopened.close()
    assert set(expected) | {after} <= set(reopened_ids)
    assert reopened_ids[-1] == after


CASES = [
    # fsync, format, max_entries (50: pruning compacts often, so kills land in compactions too)
    ("never", "json", 0),
    ("batch", "json", 0),
    ("never", "pickle", 0),
    ("batch", "pickle", 50),
    ("never", "json", 50),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("fsync", "fmt", "max_entries"), CASES)
def test_sigkill_loses_no_acknowledged_add(tmp_path, no_leaked_children, fsync, fmt, max_entries):
    rng = random.Random(f"{fsync}{fmt}{max_entries}")
    for round_ in range(2):
        directory = tmp_path / f"round{round_}"
        acked = kill_mid_stream(directory, fsync=fsync, fmt=fmt, max_entries=max_entries,
                                acked_before_kill=rng.randint(50, 400), delay=rng.uniform(0, 0.003))
        assert len(acked) >= 50
        check_survivors(directory, acked, fmt=fmt, max_entries=max_entries)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("fsync", "fmt", "max_entries"), CASES)
def test_sigkill_soak(tmp_path, no_leaked_children, fsync, fmt, max_entries):
    """The same, 25 kills per case, several kills in a row on the same directory."""
    rng = random.Random(f"soak{fsync}{fmt}{max_entries}")
    directory = tmp_path / "dlq"
    all_acked: list = []
    for _ in range(25):
        acked = kill_mid_stream(directory, fsync=fsync, fmt=fmt, max_entries=max_entries,
                                acked_before_kill=rng.randint(1, 600), delay=rng.uniform(0, 0.005))
        all_acked.extend(acked)
        check_survivors(directory, acked, fmt=fmt, max_entries=max_entries)
    if not max_entries:
        queue = DeadLetterQueue(DLQPolicy(directory=directory, format=fmt, max_entries=0,
                                          allow_pickle=True))
        assert set(all_acked) <= {e.entry_id for e in queue.get_entries()}
        queue.close()
