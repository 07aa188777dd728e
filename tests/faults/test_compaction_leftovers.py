"""SIGKILL during a compaction: the next open removes the temp files it left (issue 13, 7).

Only this queue's own leftovers go: files matching its temp-file pattern and owned
by this user. Anything else in the directory (another user's file with the same
pattern, other names) stays.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
import warnings
from typing import Set

import pytest

from amorsize import DeadLetterQueue, DLQPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRIES = 300
JOURNAL_FILES = {"dlq.jsonl", ".dlq.lock"}

pytestmark = pytest.mark.usefixtures("no_leaked_children")

# Builds a ~6 MB journal, then compacts it over and over (add one, remove it), so a
# temp file of the rewrite exists most of the time.
COMPACTOR = r"""
import sys
from amorsize import DeadLetterQueue, DLQPolicy

queue = DeadLetterQueue(DLQPolicy(directory=sys.argv[1], max_entries=0, fsync="never"))
if len(queue) == 0:
    queue.extend(
        queue.add({"n": n, "pad": "x" * 20000}, ValueError(n)) for n in range(int(sys.argv[2]))
    )
print("ready", flush=True)
while True:
    queue.remove([queue.add("doomed", KeyError("doomed")).entry_id])
"""


def leftovers(directory: str) -> Set[str]:
    return set(os.listdir(directory)) - JOURNAL_FILES


def kill_mid_compaction(directory: str) -> Set[str]:
    """Start the compactor, SIGKILL it while a temp file exists; return what it left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", COMPACTOR, directory, str(ENTRIES)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not leftovers(directory):
            assert time.monotonic() < deadline, "no compaction temp file appeared in 60 s"
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()
    return leftovers(directory)


@pytest.mark.timeout(300)
def test_next_open_removes_only_this_queues_compaction_leftovers(tmp_path):
    directory = str(tmp_path / "dlq")
    left: Set[str] = set()
    for _ in range(8):  # a kill can land just after the rename; try again then
        left |= kill_mid_compaction(directory)
        if left:
            break
    assert left, "8 kills and never one during a compaction"

    foreign = {"notes.txt", "dlq.jsonl.bak"}
    for name in foreign:
        with open(os.path.join(directory, name), "w") as handle:
            handle.write("not the queue's\n")
    others_tmp = None
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            nobody = None
        if nobody is not None:  # same name pattern, another owner: not ours to delete
            sample = sorted(left)[0]
            stem, dot, suffix = sample.rpartition(".")
            others_tmp = f"{stem}x{dot}{suffix}" if dot else sample + "x"
            with open(os.path.join(directory, others_tmp), "w") as handle:
                handle.write("someone else's\n")
            os.chown(os.path.join(directory, others_tmp), nobody.pw_uid, nobody.pw_gid)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    try:
        assert ENTRIES <= len(queue) <= ENTRIES + 1  # the doomed add may be on file
    finally:
        queue.close()
    remaining = leftovers(directory)
    assert not (remaining & left), f"compaction leftovers not removed: {sorted(remaining & left)}"
    assert foreign <= remaining, "the open removed files that are not the queue's"
    if others_tmp is not None:
        assert others_tmp in remaining, "another user's file was removed"
