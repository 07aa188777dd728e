"""Every malformed journal is a named error (issue 13, "Deliver" 4); checkpoints: test_corrupt_checkpoint.py.

A fuzzer mutates valid journals and checkpoints (bit flips, truncation,
insertion, deep nesting, wrong field types, huge numbers, invalid UTF-8, and
structure-aware replacement of any JSON subtree):

* a journal opens as a valid queue or raises ``DLQCorruptError``; with
  ``strict=False`` it always opens, skipping and counting bad lines; and then
  ``get_summary()``, ``filter()`` and the CLI's ``list``/``summary`` raise nothing;
* a checkpoint loads (the run returns one value per input) or raises
  ``CheckpointMismatchError`` saying how to start fresh.

500 journal and 500 checkpoint examples run in the default suite; each example is
kept cheap (in-process, no subprocess).
"""


from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from typing import Tuple

import pytest
from fuzz_mutations import (
    DEEP,
    FUZZ,
    JOURNAL_FIELDS,
    ROOT,
    apply,
    mutations,
    open_queue,
    set_json_field,
    valid_journal,
)
from hypothesis import given, settings

from amorsize import DeadLetterQueue, DLQCorruptError
from amorsize.cli import main as cli_main

# --- journals ------------------------------------------------------------------------------


def use(queue: DeadLetterQueue) -> dict:
    summary = queue.get_summary()
    queue.filter(error_type="ValueError")
    queue.filter(reason="timeout", since=0.0, until=2.0**40)
    for entry in queue.get_entries():
        entry.to_dict()
    return summary


def check_journal(directory: str, data: bytes) -> None:
    with open(os.path.join(directory, "dlq.jsonl"), "wb") as handle:
        handle.write(data)
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    try:
        queue = open_queue(directory, strict=True)
    except DLQCorruptError as exc:
        assert exc.line >= 1 and exc.path.endswith("dlq.jsonl")
    else:
        try:
            use(queue)
        finally:
            queue.close()
    queue = open_queue(directory, strict=False)  # never raises: bad lines are skipped
    try:
        summary = use(queue)
        assert summary["total_entries"] + summary["corrupt_skipped"] <= lines
    finally:
        queue.close()


@pytest.mark.timeout(300)
@FUZZ
@given(mutations(JOURNAL_FIELDS))
def test_any_journal_bytes_open_as_a_queue_or_raise_dlq_corrupt_error(tmp_path, changes):
    data = valid_journal()
    for change in changes:
        data = apply(data, change)
    check_journal(str(tmp_path), data)


def run_cli(*argv: str) -> Tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(list(argv))
    return code, err.getvalue()


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=100)
@given(mutations(JOURNAL_FIELDS))
def test_cli_on_any_journal_exits_0_or_3_without_a_traceback(tmp_path, changes):
    data = valid_journal()
    for change in changes:
        data = apply(data, change)
    directory = str(tmp_path)
    with open(os.path.join(directory, "dlq.jsonl"), "wb") as handle:
        handle.write(data)
    for argv in (("list",), ("summary", "--json"), ("list", "--no-strict"), ("summary", "--no-strict")):
        code, err = run_cli("dlq", argv[0], directory, *argv[1:])
        assert code in (0, 3), (argv, code, err)
        if code == 3:
            assert "dlq.jsonl" in err


# --- named cases, journal ------------------------------------------------------------------


def journal_with_middle(line: bytes) -> bytes:
    first, *_rest = valid_journal().split(b"\n")
    return first + b"\n" + line + b"\n" + first.replace(b'"entry_id":"', b'"entry_id":"f', 1) + b"\n"


def good_line_with(field: str, raw: str) -> bytes:
    return set_json_field(valid_journal().split(b"\n")[0], field, raw)


NAMED_JOURNAL_CASES = {
    "deep-nesting-line": b"[" * DEEP + b"]" * DEEP,
    "deep-nesting-field": good_line_with("item", "[" * DEEP + "]" * DEEP),
    "timestamp-dict": good_line_with("timestamp", '{"a": 1}'),
    "timestamp-string": good_line_with("timestamp", '"yesterday"'),
    "timestamp-infinite": good_line_with("timestamp", "1e999"),
    "retry-count-huge": good_line_with("retry_count", "1" + "0" * 400),
    "retry-count-list": good_line_with("retry_count", "[1]"),
    "error-type-number": good_line_with("error_type", "5"),
    "error-message-list": good_line_with("error_message", '["a"]'),
    "reason-unknown": good_line_with("reason", '"gremlins"'),
    "traceback-dict": good_line_with("traceback", "{}"),
    "metadata-list": good_line_with("metadata", "[1, 2]"),
    "item-codec-number": good_line_with("item_codec", "7"),
    "cloudpickle-not-base64": good_line_with("item_codec", '"cloudpickle"'),
    "invalid-utf8": good_line_with("error_message", '"ok"').replace(b'"ok"', b'"\xff\xfe"'),
}


@pytest.mark.parametrize("name", sorted(NAMED_JOURNAL_CASES))
def test_named_corrupt_record_is_dlq_corrupt_error_or_skipped_and_counted(tmp_path, name):
    """Why: RecursionError on open; TypeError later in get_summary() for wrong field types."""
    data = journal_with_middle(NAMED_JOURNAL_CASES[name])
    with open(tmp_path / "dlq.jsonl", "wb") as handle:
        handle.write(data)
    with pytest.raises(DLQCorruptError) as info:
        open_queue(str(tmp_path), strict=True)
    assert info.value.line == 2
    queue = open_queue(str(tmp_path), strict=False)
    try:
        summary = use(queue)
        assert summary["corrupt_skipped"] == 1 and summary["total_entries"] == 2
    finally:
        queue.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["deep-nesting-line", "timestamp-dict", "retry-count-huge"])
def test_cli_reports_a_corrupt_journal_with_exit_3_file_and_line(tmp_path, name):
    """Why: the CLI exited 1 with a Python traceback."""
    with open(tmp_path / "dlq.jsonl", "wb") as handle:
        handle.write(journal_with_middle(NAMED_JOURNAL_CASES[name]))
    for command in ("summary", "list"):
        done = subprocess.run(
            [sys.executable, "-m", "amorsize", "dlq", command, str(tmp_path)],
            capture_output=True, text=True, timeout=100, env=dict(os.environ, PYTHONPATH=ROOT),
        )
        assert done.returncode == 3, (command, done.returncode, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert str(tmp_path / "dlq.jsonl") in done.stderr and "line 2" in done.stderr


