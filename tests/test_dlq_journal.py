"""The append-only journal: on-disk format, restart, torn tails, corruption, failures, writers."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import multiprocessing
import os
import time
import warnings

import pytest

from amorsize import DeadLetterQueue, DLQCorruptError, DLQEntry, DLQPolicy
from amorsize.dlq import journal as journal_module

ERR = ValueError("boom")


def policy(directory, **kw) -> DLQPolicy:
    kw.setdefault("max_entries", 0)
    return DLQPolicy(directory=directory, **kw)


def journal_path(directory) -> str:
    return os.path.join(os.fspath(directory), "dlq.jsonl")


def reopen_items(directory, **kw):
    queue = DeadLetterQueue(policy(directory, **kw))
    try:
        return [e.item for e in queue.get_entries()]
    finally:
        queue.close()


# -- persistence failures ---------------------------------------------------------


def test_a_write_that_fails_half_way_is_cut_by_the_next_append(tmp_path, monkeypatch, caplog):
    """Disk full after part of a record: the partial line must not swallow the next append."""
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add(1, ERR)
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        queue.add(2, ERR)  # must not raise
    monkeypatch.setattr(os, "write", real_write)
    queue.add(3, ERR)
    queue.add(4, ERR)
    assert queue.get_summary()["persist_errors"] == 1
    assert [e.item for e in queue.get_entries()] == [1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing torn is left behind
        assert reopen_items(tmp_path) == [1, 2, 3, 4]
    queue.close()


def test_an_open_queue_cuts_a_tail_torn_by_another_writer(tmp_path):
    """Another writer died mid-record while this queue had the file open already."""
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add("before", ERR)
    with open(journal_path(tmp_path), "ab") as handle:
        handle.write(b'{"entry_id":"18ec0000000000000000000000000000","v":1,"error_ty')
    queue.add("after", ERR)
    queue.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reopen_items(tmp_path) == ["before", "after"]


def test_a_complete_last_record_without_newline_is_finished_not_cut(tmp_path):
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add("a", ERR)
    queue.add("b", ERR)
    queue.close()
    with open(journal_path(tmp_path), "rb+") as handle:
        handle.truncate(os.path.getsize(journal_path(tmp_path)) - 1)  # drop the final newline
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add("c", ERR)
    queue.close()
    assert reopen_items(tmp_path) == ["a", "b", "c"]


def _add_in_child(queue, done) -> None:
    queue.add("from child", ERR)
    done.set()


@pytest.mark.timeout(60)
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_does_not_share_the_parents_journal_lock(tmp_path, no_leaked_children):
    """flock locks belong to the open file description, which fork shares.

    The parent holds the journal lock (as during a compaction); a forked child that
    uses the inherited queue must wait for it instead of writing under it.
    """
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add("from parent", ERR)
    ctx = multiprocessing.get_context("fork")
    done = ctx.Event()
    queue._journal._lock(fcntl.LOCK_EX)
    child = ctx.Process(target=_add_in_child, args=(queue, done))
    try:
        child.start()
        assert not done.wait(0.5), "the child wrote while the parent held the journal lock"
    finally:
        queue._journal._unlock()
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    assert done.is_set()
    queue.close()
    assert reopen_items(tmp_path) == ["from parent", "from child"]


def test_a_dropped_queue_does_not_leak_file_descriptors(tmp_path):
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    DeadLetterQueue(policy(tmp_path)).add(0, ERR)
    gc.collect()
    before = open_fds()
    for i in range(50):
        DeadLetterQueue(policy(tmp_path)).add(i, ERR)  # never closed
    gc.collect()
    assert open_fds() - before < 5


# -- compaction -------------------------------------------------------------------


def test_compaction_keeps_the_newest_version_of_an_entry_added_twice(tmp_path):
    """add_entry of an updated entry appends a second line; compaction must keep that one."""
    queue = DeadLetterQueue(policy(tmp_path))
    first = queue.add("item", ERR)
    other = queue.add("other", ERR)
    queue.add_entry(dataclasses.replace(first, retry_count=5, error_message="newer"))
    queue.remove([other.entry_id])  # compacts
    queue.close()
    reopened = DeadLetterQueue(policy(tmp_path))
    assert [(e.item, e.retry_count, e.error_message) for e in reopened.get_entries()] == [
        ("item", 5, "newer")
    ]
    reopened.close()


def test_compaction_reads_ids_that_need_json_escaping(tmp_path):
    queue = DeadLetterQueue(policy(tmp_path))
    odd = DLQEntry("x", "ValueError", "m", time.time(), entry_id='id "with" quotes\\')
    queue.add_entry(odd)
    keep = queue.add("keep", ERR)
    assert queue.remove([odd.entry_id]) == 1
    queue.close()
    reopened = DeadLetterQueue(policy(tmp_path))
    assert [e.entry_id for e in reopened.get_entries()] == [keep.entry_id]
    reopened.close()


# -- corruption -------------------------------------------------------------------


def _write_lines(directory, lines) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(journal_path(directory), "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")


def _good_lines(directory, items):
    queue = DeadLetterQueue(policy(directory, auto_persist=False))
    for item in items:
        queue.add(item, ERR)
    return [journal_module.encode_entry(e, pickle_everything=False).rstrip(b"\n")
            for e in queue.get_entries()]


@pytest.mark.parametrize(
    "bad",
    [
        b'{"entry_id":"x","error_type":"E","item_codec":"json"}',  # keys missing
        b'{"entry_id":"x","error_type":"E","error_message":"m","timestamp":1.0,'
        b'"item_codec":"no-such-codec","item":1}',
        b'{"entry_id":"x","error_type":"E","error_message":"m","timestamp":1.0,'
        b'"item_codec":"cloudpickle","item":"bm90IGEgcGlja2xl"}',  # base64 of "not a pickle"
    ],
    ids=["missing-keys", "unknown-codec", "bad-pickle"],
)
def test_a_parseable_but_undecodable_record_is_corruption_with_its_line(tmp_path, bad):
    good = _good_lines(tmp_path, ["a", "b"])
    _write_lines(tmp_path, [good[0], bad, good[1]])
    with pytest.raises(DLQCorruptError) as info:
        DeadLetterQueue(policy(tmp_path, allow_pickle=True))
    assert info.value.line == 2
    assert "dlq.jsonl" in str(info.value) and "line 2" in str(info.value)
    queue = DeadLetterQueue(policy(tmp_path, allow_pickle=True, strict=False))
    assert [e.item for e in queue.get_entries()] == ["a", "b"]
    assert queue.get_summary()["corrupt_skipped"] == 1
    queue.close()


def _corrupt_middle(directory) -> None:
    with open(journal_path(directory), "rb") as handle:
        lines = handle.read().split(b"\n")
    lines.insert(1, b"this line is not a record")
    with open(journal_path(directory), "wb") as handle:
        handle.write(b"\n".join(lines))


def test_a_non_strict_queue_can_clear_prune_and_remove_over_a_corrupt_record(tmp_path, caplog):
    queue = DeadLetterQueue(policy(tmp_path))
    for i in range(4):
        queue.add(i, ERR)
    queue.close()
    _corrupt_middle(tmp_path)
    lax = DeadLetterQueue(policy(tmp_path, strict=False, max_entries=3))
    assert [e.item for e in lax.get_entries()] == [1, 2, 3]
    lax.remove([lax.get_entries()[0].entry_id])
    lax.add(4, ERR)
    assert lax.get_summary()["persist_errors"] == 0
    lax.close()
    assert reopen_items(tmp_path) == [2, 3, 4]  # strict again: the unreadable line is gone
    lax = DeadLetterQueue(policy(tmp_path, strict=False))
    assert lax.clear() == 3
    lax.close()
    assert reopen_items(tmp_path) == []


def test_a_strict_queue_whose_file_gets_corrupt_keeps_working_in_memory(tmp_path, caplog):
    queue = DeadLetterQueue(policy(tmp_path))
    for i in range(3):
        queue.add(i, ERR)
    _corrupt_middle(tmp_path)  # behind the open queue's back
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        assert queue.clear() == 3  # the file cannot be compacted: logged, not raised
        queue.add("new", ERR)
    assert [e.item for e in queue.get_entries()] == ["new"]
    assert queue.get_summary()["persist_errors"] == 1
    assert "corrupt at line 2" in caplog.text
    with pytest.raises(DLQCorruptError):
        queue.save()  # an explicit save says what is wrong
    queue.close()


def _fail_compaction(path, lines):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_compaction_is_not_forgotten(tmp_path, monkeypatch, caplog):
    """clear() and a replay while the disk is full: a restart must not resurrect or revert."""
    queue = DeadLetterQueue(policy(tmp_path))
    for i in range(3):
        queue.add(i, ERR)
    stays = queue.add("stays", ERR)
    monkeypatch.setattr(journal_module, "write_atomically", _fail_compaction)
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        queue.remove([e.entry_id for e in queue.get_entries()[:3]])
        queue.update([dataclasses.replace(stays, retry_count=7)])
    assert queue.get_summary()["persist_errors"] == 2
    with pytest.raises(OSError):
        queue.save()
    monkeypatch.undo()
    queue.add("later", ERR)  # the next successful write catches up
    queue.close()
    reopened = DeadLetterQueue(policy(tmp_path))
    assert [(e.item, e.retry_count) for e in reopened.get_entries()] == [("stays", 7), ("later", 0)]
    reopened.close()
