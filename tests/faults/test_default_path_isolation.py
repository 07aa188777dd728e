"""Issue 12, "Why" 1: the default path must not run user code in the caller's process.

Cheap items make the optimizer choose serial; today that runs ``func`` in the
caller, so a segfault or ``os._exit`` at item 500 of 1000 kills the user's
program and the failures before it never reach the on-disk DLQ. Target: the
default runs in one worker, a crash costs one item, and the caller lives.
``backend="in_process"`` is the explicit opt-in, and there each failure is on
disk before the next item starts.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from fault_probes import count_dead_letters
from fault_support import (
    ProcessTag,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
    run_script,
)

from amorsize import DeadLetterQueue, DLQPolicy, execute

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("no_leaked_children")]

RAISES = {307, 407}
CRASH_AT = 500


def on_disk(directory: Path) -> dict:
    """``{item: reason}`` of what a fresh queue reads from the directory's journal."""
    entries = DeadLetterQueue(DLQPolicy(directory=str(directory))).get_entries()
    items = [e.item for e in entries]
    assert len(items) == len(set(items)), f"an item was dead-lettered twice: {sorted(items)}"
    return {e.item: e.reason for e in entries}


@pytest.mark.parametrize("crash", ["segfault", "exit"])
def test_a_crash_on_the_default_path_costs_one_item(
    tmp_path: Path, start_method: str, crash: str, process_tag: ProcessTag
) -> None:
    dlq_dir = tmp_path / "dlq"
    done = run_script(process_tag, "crash_at_500.py", str(dlq_dir), crash,
                      json.dumps({"start_method": start_method}), cwd=tmp_path)
    assert done.returncode == 0, (
        f"the caller died (rc {done.returncode}): the default path ran func in the caller's "
        f"process\nstderr tail:\n{done.stderr[-2000:]}"
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["n"] == 1000
    assert report["wrong"] == []
    assert report["failures"] == sorted(RAISES | {CRASH_AT})
    assert on_disk(dlq_dir) == {307: "exception", 407: "exception", 500: "worker_crash"}


def test_in_process_backend_is_explicit_and_journals_failures_before_the_crash(
    tmp_path: Path, process_tag: ProcessTag
) -> None:
    # backend="in_process" gives up crash isolation, knowingly: os._exit ends the caller.
    # What it keeps: every failure before the crash is already on disk.
    dlq_dir = tmp_path / "dlq"
    done = run_script(process_tag, "crash_at_500.py", str(dlq_dir), "exit",
                      json.dumps({"backend": "in_process"}), cwd=tmp_path)
    assert done.returncode == 1, (
        f"expected the caller to end with func's os._exit(1); rc {done.returncode}\n"
        f"stderr tail:\n{done.stderr[-2000:]}"
    )
    assert on_disk(dlq_dir) == {307: "exception", 407: "exception"}


def test_in_process_backend_writes_each_failure_before_the_next_item_starts(
    tmp_path: Path,
) -> None:
    # func itself reads the on-disk DLQ: item i must see every failure before it.
    bad = frozenset({3, 11})
    func = functools.partial(count_dead_letters, bad=bad, directory=str(tmp_path))
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    results = execute(func, range(20), dlq=dlq, backend="in_process")
    for i, value in enumerate(results):
        if i in bad:
            assert not value and value.reason == "exception"
        else:
            assert value == sum(1 for b in bad if b < i), (i, value)
    assert sorted(e.item for e in dlq.get_entries()) == sorted(bad)
