"""Tests written to kill mutants that the rest of the suite let live.

Each test names the mutation it kills; each was checked by applying the mutation
by hand and watching the test fail. Public API only, so the engine can move.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, List

import pytest

from amorsize import DeadLetterQueue, DLQEntry, DLQPolicy, RetryPolicy, execute, is_failure

pytestmark = pytest.mark.timeout(90)

ERR = ValueError("boom")
#: Larger than the journal's 64 KiB look-back step, so finding the last newline
#: takes several steps.
BIG = 200_000


def _items(directory: Path) -> List[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn tail left behind would warn here
        return [e.item for e in DeadLetterQueue(DLQPolicy(directory=str(directory))).get_entries()]


def test_a_torn_record_larger_than_the_look_back_step_is_cut_before_the_next_add(
    tmp_path: Path,
) -> None:
    # Kills `while start > 0 and cut < 0` -> `if ...` in Journal._clean_end: with a
    # single 64 KiB step no newline is found, the garbage is kept and the next
    # record is glued to it, so the acknowledged add is lost on reopen.
    queue = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    queue.add("small", ERR)
    queue.add("x" * BIG, ERR)
    queue.close()
    journal = tmp_path / "dlq.jsonl"
    size = journal.stat().st_size
    os.truncate(journal, size - 100)  # a crash mid-write of the big record
    with pytest.warns(RuntimeWarning, match="torn last record"):
        torn = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    assert [e.item for e in torn.get_entries()] == ["small"]
    torn.add("after", ERR)
    torn.close()
    assert _items(tmp_path) == ["small", "after"]
    assert journal.read_bytes().count(b"\n") == 2  # the torn bytes are gone, not hidden


def fail_every_fifth(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"fifth {x}")
    return x * 3


def test_default_path_keeps_results_aligned_when_sampled_items_fail() -> None:
    # Kills `self.next_start = len(self.precomputed)` (instead of len(sampled)) in the
    # dry-run planner: a failed sample shifts every later position by one.
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
    results = execute(fail_every_fifth, range(100), dlq=dlq)  # n_jobs/chunksize None: dry run
    assert len(results) == 100
    for x, value in enumerate(results):
        if x % 5 == 0:
            assert is_failure(value) and value.error_type == "ValueError", (x, value)
        else:
            assert value == x * 3, (x, value)
    entries = dlq.get_entries()
    assert sorted(e.item for e in entries) == list(range(0, 100, 5))
    assert all(e.metadata["index"] == e.item for e in entries)
    assert {v.entry_id for v in results if is_failure(v)} == {e.entry_id for e in entries}


def test_give_up_on_a_base_class_stops_a_subclass() -> None:
    # Kills `type(exc) in self.give_up_on` (instead of isinstance) in should_retry.
    calls: List[str] = []
    slept: List[float] = []

    def missing(path: str) -> str:
        calls.append(path)
        raise FileNotFoundError(path)

    policy = RetryPolicy(max_retries=3, initial_delay=0.1, give_up_on=OSError, sleep=slept.append)
    outcome = policy.run(missing, "/nowhere")
    assert not outcome.ok and isinstance(outcome.error, FileNotFoundError)
    assert outcome.attempts == 1 and calls == ["/nowhere"] and slept == []
    assert not policy.should_retry(FileNotFoundError("x"), 1)
    assert policy.should_retry(ValueError("x"), 1)  # only OSError and its subclasses give up



def test_a_torn_tail_ending_exactly_one_look_back_step_after_a_newline_keeps_that_line(
    tmp_path: Path,
) -> None:
    # The boundary of Journal._clean_end's look-back: the last newline sits exactly at the
    # start of the first 64 KiB step. (`cut <= 0` there is equivalent: each step reads to
    # the end of the file, so the next one finds the same newline.)
    queue = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    queue.add("kept", ERR)
    queue.close()
    journal = tmp_path / "dlq.jsonl"
    with open(journal, "ab") as handle:
        handle.write(b'{"entry_id":"torn"' + b"x" * (65535 - 18))  # 65535 bytes, no newline
    with pytest.warns(RuntimeWarning, match="torn last record"):
        torn = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    torn.add("after", ERR)
    torn.close()
    assert _items(tmp_path) == ["kept", "after"]


def test_compaction_keeps_entries_whose_id_json_escapes(tmp_path: Path) -> None:
    # Kills the slow path of compaction's id lookup (json.loads(line)["entry_id"]): an id
    # with a quote, a backslash or non-ASCII text is escaped in the line.
    odd_ids = ['a"b', "back\\slash", "caf\u00e9"]
    queue = DeadLetterQueue(DLQPolicy(directory=str(tmp_path), max_entries=0))
    made = [DLQEntry(i, "E", "m", 1.0, entry_id=entry_id) for i, entry_id in enumerate(odd_ids)]
    queue.extend(made)
    plain = queue.add("plain", ERR)
    assert queue.remove([plain.entry_id, odd_ids[0]]) == 2  # a compaction
    queue.close()
    reopened = DeadLetterQueue(DLQPolicy(directory=str(tmp_path), max_entries=0)).get_entries()
    assert [e.entry_id for e in reopened] == odd_ids[1:]
