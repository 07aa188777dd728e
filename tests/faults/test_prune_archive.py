"""Nothing dropped by default (issue 13, "Deliver" 2).

``max_entries=10000`` stays the default, but pruning moves the oldest entries to
``dlq.pruned.jsonl`` beside the journal instead of deleting them, logs one WARNING
per run with the count, and keeps memory and disk in agreement. Every ``Failure``
names an entry that is live or archived; ``amorsize dlq list --archived`` shows them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import List, Set

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, Failure, execute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCHIVE_NAME = "dlq.pruned.jsonl"
FAILURES = 25_000


def always_fails(x: int) -> int:
    raise ValueError(f"bad {x}")


def archived_ids(directory: str) -> List[str]:
    path = os.path.join(directory, ARCHIVE_NAME)
    assert os.path.isfile(path), f"no archive {ARCHIVE_NAME} beside the journal"
    with open(path, "rb") as handle:
        return [json.loads(line)["entry_id"] for line in handle if line.strip()]


def journal_ids(directory: str) -> Set[str]:
    queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    try:
        return {e.entry_id for e in queue.get_entries()}
    finally:
        queue.close()


@pytest.mark.timeout(600)
def test_25000_failures_under_the_default_policy_drop_nothing(tmp_path, caplog):
    """Why: 10,000 kept in memory, 13,995 on disk, 15,000 Failures naming no entry."""
    directory = str(tmp_path / "dlq")
    dlq = DeadLetterQueue(DLQPolicy(directory=directory))
    assert dlq.policy.max_entries == 10_000  # the seed's default, kept
    caplog.set_level(logging.INFO, logger="amorsize")
    results = execute(always_fails, range(FAILURES), n_jobs=1, dlq=dlq)
    dlq.close()
    assert len(results) == FAILURES and all(isinstance(r, Failure) for r in results)

    live = {e.entry_id for e in dlq.get_entries()}
    on_disk = journal_ids(directory)
    assert on_disk == live, f"memory holds {len(live)} entries, the journal {len(on_disk)}"
    archived = archived_ids(directory)
    assert len(archived) == len(set(archived)), "an entry was archived twice"
    assert not live & set(archived), "an entry is both live and archived"
    assert len(live) + len(archived) == FAILURES
    unnamed = [r.entry_id for r in results if r.entry_id not in live and r.entry_id not in set(archived)]
    assert not unnamed, f"{len(unnamed)} Failures name no live or archived entry"

    pruning = [
        r for r in caplog.records
        if r.name.startswith("amorsize") and any(w in r.getMessage().lower() for w in ("prun", "archiv"))
    ]
    warned = [r for r in pruning if r.levelno == logging.WARNING]
    assert len(warned) == 1, [(r.levelname, r.getMessage()) for r in pruning]
    assert any(ch.isdigit() for ch in warned[0].getMessage())


@pytest.mark.timeout(120)
def test_cli_lists_archived_entries(tmp_path):
    directory = str(tmp_path / "dlq")
    queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=10))
    ids = [queue.add({"n": n}, KeyError(n)).entry_id for n in range(25)]
    queue.close()
    assert [e.entry_id for e in queue.get_entries()] == ids[-10:]
    done = subprocess.run(
        [sys.executable, "-m", "amorsize", "dlq", "list", directory, "--archived", "--json"],
        capture_output=True, text=True, timeout=100, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listed = [json.loads(line)["entry_id"] for line in done.stdout.splitlines() if line.strip()]
    assert listed == ids[:15]


@pytest.mark.timeout(120)
def test_a_reopened_queue_sees_the_same_live_entries_as_the_writer(tmp_path):
    directory = str(tmp_path / "dlq")
    queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=100))
    for n in range(1_000):
        queue.add(n, ValueError(n))
    queue.close()
    assert journal_ids(directory) == {e.entry_id for e in queue.get_entries()}
    assert len(archived_ids(directory)) == 900
