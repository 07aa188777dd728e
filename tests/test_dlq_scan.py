"""The summary read as rows (amorsize.dlq.scan) equals the summary of the loaded queue.

Journals are made by a real queue (dedupe updates, removals, replays that update,
pruning to the archive, retention by age), then given the odd lines a journal can
hold (corrupt, torn, blank, pickled or undecodable payloads); the CLI's summary
then runs through both paths (``--grep ""`` matches every entry and forces the
full load).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from typing import Iterator, List
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amorsize import DeadLetterQueue, DLQCorruptError, DLQEntry, DLQPolicy
from amorsize.cli import listing
from amorsize.cli.filters import host_of
from amorsize.dlq import scan
from amorsize.dlq.records import encode_entry
from tests.test_cli import run_main
from tests.test_cli_operator import mk

KINDS = [("ValueError", "record {n} is malformed"), ("KeyError", "'field_{n}'"),
         ("OSError", "cannot open /data/part-{n}.csv"), ("TimeoutError", "slow")]

#: Raw lines a journal may hold besides the queue's own, and what they stand for.
ODD_LINES = {
    "corrupt": b"this is not json\n",
    "bad field": encode_entry(mk(90, "x"), pickle_everything=False).replace(
        b'"retry_count":0', b'"retry_count":-1'),
    "blank": b"\n",
    "padded": b"  " + encode_entry(mk(91, "padded 1"), pickle_everything=False),
    "pickled item": encode_entry(dataclasses.replace(mk(92, "p 2"), item={1, 2}),
                                 pickle_everything=False),
    "pickled metadata": encode_entry(mk(93, "m 3"), pickle_everything=True),
    "undecodable": encode_entry(mk(94, "r"), pickle_everything=False).replace(
        b'"item_codec":"json","item":{"n":94}', b'"item_codec":"repr","item":{"nope":1}'),
    "two on a line": encode_entry(mk(96, "a"), pickle_everything=False).rstrip(b"\n")
    + encode_entry(mk(97, "b"), pickle_everything=False),
    "crlf": encode_entry(mk(98, "windows 1"), pickle_everything=False).replace(b"\n", b"\r\n"),
    "not utf-8": encode_entry(mk(95, "caf\u00e9"), pickle_everything=False).replace(
        b"caf\\u00e9", b"caf\xe9"),
}

operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.integers(0, len(KINDS) - 1),
              st.integers(0, 30), st.booleans()),
    st.tuples(st.just("remove"), st.integers(0, 50)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
)


def _apply(queue: DeadLetterQueue, op: tuple, clock: list) -> None:
    entries = queue.get_entries()
    if op[0] == "add":
        _, item, kind, n, old = op
        error_type, message = KINDS[kind]
        clock[0] += 1.0
        stamp = clock[0] - (10 * 86400 if old else 0)  # old ones fall to max_age_seconds
        queue.add_entry(DLQEntry({"item": item}, error_type, message.format(n=n), stamp,
                                 retry_count=n % 3, reason="timeout" if kind == 3 else "exception",
                                 metadata={"function": f"job.f{item % 2}", "host": f"h{n % 2}"}))
    elif entries and op[0] == "remove":
        queue.update([], remove_ids=[entries[op[1] % len(entries)].entry_id])
    elif entries:  # a replay whose item failed again: the entry is rewritten in place
        again = dataclasses.replace(entries[op[1] % len(entries)], error_message="again 5",
                                    retry_count=7)
        queue.update([again])


def _journal(directory: str, ops: list, dedupe: bool, max_entries: int, max_age: bool) -> None:
    policy = DLQPolicy(directory=directory, dedupe=dedupe, max_entries=max_entries,
                       max_age_seconds=86400.0 if max_age else None)
    queue = DeadLetterQueue(policy)
    clock = [time.time() - 1000]
    for op in ops:
        _apply(queue, op, clock)
    queue.close()


def _insert(directory: str, odd: list) -> None:
    path = os.path.join(directory, "dlq.jsonl")
    if not odd:
        return
    with open(path, "ab+") as handle:  # a queue that never wrote has no journal yet
        handle.seek(0)
        lines = handle.read().splitlines(keepends=True)
    for position, name in odd:
        lines.insert(position % (len(lines) + 1), ODD_LINES[name])
    with open(path, "wb") as handle:
        handle.write(b"".join(lines))


def _loaded(directory: str, strict: bool):
    """The summary of the queue the CLI opens, or the DLQCorruptError it raises."""
    policy = DLQPolicy(directory=directory, max_entries=0, strict=strict)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last line warns in both paths
            queue = DeadLetterQueue(policy, _migrate=False)
    except DLQCorruptError as exc:
        return (exc.line, exc.detail), None
    return queue.get_summary(), queue.get_entries()


def _scanned(directory: str, strict: bool):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = scan.scan_queue(directory, strict=strict)
    except DLQCorruptError as exc:
        return (exc.line, exc.detail), None
    return found.get_summary(), found.rows


@contextlib.contextmanager
def halves() -> Iterator[List[int]]:
    """Every journal parsed in two halves, the second by a forked child; yields its pids."""
    pids: List[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    with mock.patch.object(scan, "PARALLEL_MIN_CHARS", 0), \
            mock.patch.object(scan, "_second_core", lambda: True), \
            mock.patch.object(scan.os, "fork", fork):
        yield pids
    for pid in pids:  # every child was reaped: no zombie, nothing left running
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, max_size=14), dedupe=st.booleans(),
       max_entries=st.sampled_from([0, 0, 4]), max_age=st.booleans(),
       odd=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(sorted(ODD_LINES))), max_size=2),
       torn=st.booleans(), strict=st.booleans(), in_halves=st.booleans())
def test_scanned_summary_equals_the_loaded_queues(tmp_path_factory, ops, dedupe, max_entries,
                                                  max_age, odd, torn, strict, in_halves):
    directory = str(tmp_path_factory.mktemp("q"))
    _journal(directory, ops, dedupe, max_entries, max_age)
    _insert(directory, odd)
    if torn:
        with open(os.path.join(directory, "dlq.jsonl"), "ab") as handle:
            handle.write(b'{"entry_id":"torn","v":1,"err')
    expected, entries = _loaded(directory, strict)
    with halves() if in_halves else contextlib.nullcontext():
        got, rows = _scanned(directory, strict)
    assert got == expected
    if entries is not None:
        assert [(r.entry_id, r.error_message, r.retry_count, r.function, r.signature, r.pickled,
                 host_of(r)) for r in rows] == [
            (e.entry_id, e.error_message, e.retry_count, e.function, e.signature,
             type(e.item).__name__ == "PickledPayload", host_of(e)) for e in entries]
    if not odd and not torn and os.path.exists(os.path.join(directory, "dlq.jsonl")):
        with open(os.path.join(directory, "dlq.jsonl"), "rb") as handle:
            assert scan._plain_rows(handle.name) is not None  # the one-pass path was taken


@pytest.mark.parametrize("name", sorted(ODD_LINES))
@pytest.mark.parametrize("strict", [True, False])
def test_each_odd_line_is_counted_or_reported_as_the_load_does(tmp_path, name, strict):
    ops = [("add", i, i % len(KINDS), i, False) for i in range(6)]
    # In the first half, in the second, and last (a torn tail); in one pass and in halves.
    for position in (1, 5, 99):
        directory = str(tmp_path / f"{position}")
        _journal(directory, ops, False, 0, False)
        _insert(directory, [(position, name)])
        expected, _ = _loaded(directory, strict)
        assert _scanned(directory, strict)[0] == expected
        with halves() as pids:
            assert _scanned(directory, strict)[0] == expected
        assert len(pids) == (0 if name == "not utf-8" else 1)  # no text to share: no child


def test_halves_give_the_rows_of_one_pass_and_leave_no_process(tmp_path, no_leaked_children):
    ops = [("add", i % 7, i % len(KINDS), i, False) for i in range(40)]
    directory = str(tmp_path / "q")
    _journal(directory, ops, True, 0, False)  # dedupe: ids repeat across the halves
    journal = os.path.join(directory, "dlq.jsonl")
    one_pass = scan._plain_rows(journal)
    assert one_pass is not None
    with halves() as pids:
        assert scan._plain_rows(journal) == one_pass
    assert len(pids) == 1
    with halves() as pids, mock.patch.object(scan.marshal, "dumps", side_effect=ValueError):
        assert scan._plain_rows(journal) == one_pass  # the child sent nothing: parsed here
    fds = len(os.listdir("/proc/self/fd"))
    with halves() as pids, mock.patch.object(scan.os, "fork", side_effect=BlockingIOError(11, "no")):
        assert scan._plain_rows(journal) == one_pass  # no child to be had: all parsed here
    assert pids == [] and len(os.listdir("/proc/self/fd")) == fds  # the pipe was closed


def _odd_queue(tmp_path, *odd: str) -> str:
    entries = [mk(i, f"record {i} is malformed", host=f"h{i % 2}",
                  function="job.parse" if i % 3 else "job.load") for i in range(6)]
    entries.append(mk(6, "slow", "ItemTimeoutError", "amorsize.errors.ItemTimeoutError",
                      reason="timeout"))
    directory = str(tmp_path / "q")
    queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    queue.extend(entries)
    queue.add_entry(dataclasses.replace(entries[2], error_message="record 2 failed again"))
    queue.close()
    _insert(directory, [(3 + n, name) for n, name in enumerate(odd)])
    return directory


SUMMARY_ARGS = [
    [], ["--json"], ["--by", "signature"], ["--by", "error-type", "--json"], ["--by", "reason"],
    ["--by", "function"], ["--by", "host", "--json"], ["--error-type", "valueerror"],
    ["--reason", "timeout", "--json"], ["--function", "load"], ["--host", "h1", "--by", "function"],
    ["--signature", "ValueError: record", "--json"], ["--since", "2024-05-01T03:00:00Z"],
    ["--until", "2024-05-01T03:00:00Z", "--json"], ["--error-type", "ValueErorr"],
]


@pytest.mark.parametrize("odd", [(), ("pickled item", "pickled metadata"), ("corrupt",),
                                 ("undecodable",), ("blank", "padded")])
def test_cli_summary_rows_and_full_load_print_the_same(tmp_path, capsys, odd):
    directory = _odd_queue(tmp_path, *odd)
    for strict in (["--strict"], ["--no-strict"]):
        for args in SUMMARY_ARGS:
            lean = run_main(capsys, "dlq", "summary", directory, *strict, *args)
            full = run_main(capsys, "dlq", "summary", directory, *strict, *args, "--grep", "")
            assert lean == full, args
            assert lean[0] == (3 if strict == ["--strict"] and odd in (("corrupt",),
                                                                      ("undecodable",)) else 0)


def test_cli_summary_reads_rows_not_entries(tmp_path, capsys, monkeypatch):
    directory = _odd_queue(tmp_path, "pickled item")

    def no_load(args):
        raise AssertionError("the plain summary must not load entries")

    monkeypatch.setattr(listing, "open_queue", no_load)
    code, out, err = run_main(capsys, "dlq", "summary", directory, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["total_entries"] == 8 and summary["pickled_not_loaded"] == 1
    assert summary["functions"] == {"job.load": 2, "job.parse": 6}
    with pytest.raises(AssertionError, match="must not load"):  # items are needed: the full load
        run_main(capsys, "dlq", "summary", directory, "--grep", "x")


def test_a_torn_tail_warns_once_in_the_scan(tmp_path, capsys):
    directory = _odd_queue(tmp_path)
    with open(os.path.join(directory, "dlq.jsonl"), "ab") as handle:
        handle.write(b'{"entry_id":"abc","v":1,"err')
    code, out, err = run_main(capsys, "dlq", "summary", directory)
    assert code == 0 and "entries:        7" in out
    assert err.count("amorsize: warning:") == 1 and "torn last record" in err


def test_a_row_crosses_processes_as_marshalled_values_and_pickles():
    # The forked half sends tuple(row) through marshal; rows also pickle like any record.
    import marshal
    import pickle

    row = scan.row_of(json.loads(encode_entry(mk(3, "record 3 bad", host="h9"),
                                              pickle_everything=False)))
    assert scan._new_row(scan.Row, marshal.loads(marshal.dumps(tuple(row)))) == row
    assert pickle.loads(pickle.dumps(row)) == row
    assert (row.function, row.host, row.pickled) == ("job.parse", "h9", False)
    assert row.signature == "ValueError: record <num> bad"
