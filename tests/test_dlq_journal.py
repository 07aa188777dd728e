"""The append-only journal: on-disk format, restart, torn tails, corruption, failures, writers."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import multiprocessing
import os
import stat
import time
import warnings

import pytest

from amorsize import (
    DeadLetterQueue,
    DLQCorruptError,
    DLQEntry,
    DLQFileNotFoundError,
    DLQFormat,
    DLQPolicy,
)
from amorsize.dlq import journal as journal_module
from amorsize.dlq.records import encode_entry

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
    return [encode_entry(e, pickle_everything=False).rstrip(b"\n")
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


def _fail_compaction(path, lines, **_options):
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


# -- format and restart -------------------------------------------------------------


def test_each_add_appends_one_readable_line_without_rewriting(tmp_path, monkeypatch):
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add({"order": 1}, KeyError("sku"))
    inode = os.stat(journal_path(tmp_path)).st_ino
    writes = []
    real_write = os.write

    def counting_write(fd, data):
        writes.append(len(data))
        return real_write(fd, data)

    def no_reading(*args, **kwargs):
        raise AssertionError("an add must not read the journal")

    monkeypatch.setattr(os, "write", counting_write)
    monkeypatch.setattr(journal_module, "read_records", no_reading)
    for i in range(2, 6):
        queue.add({"order": i}, KeyError("sku"))
    monkeypatch.undo()
    assert len(writes) == 4  # one write(2) per add
    assert os.stat(journal_path(tmp_path)).st_ino == inode  # appended, never rewritten
    with open(journal_path(tmp_path), encoding="ascii") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 5
    assert [len(line) + 1 for line in lines[1:]] == writes
    for n, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert record["item"] == {"order": n}  # JSON-native items are stored as they are
        assert record["item_codec"] == "json"
        assert record["error_type"] == "KeyError"
        assert record["error_message"] == "'sku'"
    queue.close()


@pytest.mark.parametrize("fmt", list(DLQFormat))
def test_a_new_queue_on_the_directory_sees_earlier_failures(tmp_path, fmt):
    queue = DeadLetterQueue(policy(tmp_path, format=fmt))
    added = [queue.add({"n": i}, KeyError(i), retry_count=i, metadata={"i": i}) for i in range(5)]
    added.append(queue.add("t", TimeoutError("slow"), reason="timeout"))
    queue.close()
    reopened = DeadLetterQueue(policy(tmp_path, format=fmt))
    assert reopened.get_entries() == added
    summary = reopened.get_summary()
    assert summary["total_entries"] == 6
    assert summary["error_types"] == {"KeyError": 5, "TimeoutError": 1}
    reopened.close()


def test_opening_a_queue_creates_no_journal_until_the_first_add(tmp_path):
    # Issue 13: construction checks (creates) the directory; the journal waits for an add.
    target = tmp_path / "dlq"
    queue = DeadLetterQueue(policy(target))
    assert target.is_dir() and not os.path.exists(journal_path(target))
    queue.get_summary()
    assert not os.path.exists(journal_path(target))
    queue.add(1, ERR)
    assert os.path.exists(journal_path(target))
    queue.close()


def test_files_are_0600_and_directories_0700(tmp_path):
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        directory = tmp_path / "nested" / "dlq"
        queue = DeadLetterQueue(policy(directory))
        queue.add(1, ERR)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(journal_path(directory)).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(directory / ".dlq.lock").st_mode) == 0o600
        queue.clear()  # compaction replaces the file
        queue.add(2, ERR)
        assert stat.S_IMODE(os.stat(journal_path(directory)).st_mode) == 0o600
        saved = queue.save(tmp_path / "elsewhere" / "copy.jsonl")
        assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
        queue.close()
    finally:
        os.umask(old_umask)


# -- save and load ----------------------------------------------------------------------


def test_save_returns_the_path_and_load_returns_the_count(tmp_path):
    memory = DeadLetterQueue(DLQPolicy(directory=tmp_path / "mem", auto_persist=False, max_entries=0))
    for i in range(3):
        memory.add(i, ERR)
    target = tmp_path / "out" / "copy.jsonl"
    assert memory.save(target) == os.fspath(target)
    assert memory.save() == journal_path(tmp_path / "mem")
    fresh = DeadLetterQueue(DLQPolicy(directory=tmp_path / "fresh", auto_persist=False, max_entries=0))
    assert fresh.load(target) == 3
    assert fresh.get_entries() == memory.get_entries()
    assert fresh.load(target) == 3  # same ids: updated in place, not duplicated
    assert len(fresh) == 3
    persistent = DeadLetterQueue(policy(tmp_path / "journal"))
    assert persistent.save() == journal_path(tmp_path / "journal")
    assert persistent.load(target) == 3  # merged and appended to its own journal
    persistent.close()
    assert reopen_items(tmp_path / "journal") == [0, 1, 2]


def test_load_of_a_missing_file_is_an_ioerror_saying_so(tmp_path):
    queue = DeadLetterQueue(policy(tmp_path))
    with pytest.raises(IOError, match="DLQ file not found") as info:
        queue.load(tmp_path / "nope.jsonl")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DLQFileNotFoundError):
        queue.load()  # no journal written yet
    memory = DeadLetterQueue(DLQPolicy(directory=tmp_path / "none", auto_persist=False))
    with pytest.raises(DLQFileNotFoundError, match="DLQ file not found"):
        memory.load()


# -- torn tails and corruption ----------------------------------------------------------


def test_a_torn_last_record_is_skipped_with_a_warning(tmp_path):
    queue = DeadLetterQueue(policy(tmp_path))
    for i in range(3):
        queue.add(i, ERR)
    queue.close()
    with open(journal_path(tmp_path), "ab") as handle:
        handle.write(b'{"entry_id":"abc","error_')
    with pytest.warns(RuntimeWarning, match="torn last record"):
        assert reopen_items(tmp_path) == [0, 1, 2]


def test_a_corrupt_middle_record_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    queue = DeadLetterQueue(policy(tmp_path))
    for i in range(4):
        queue.add(i, ERR)
    queue.close()
    _corrupt_middle(tmp_path)
    with pytest.raises(DLQCorruptError) as info:
        DeadLetterQueue(policy(tmp_path))
    assert info.value.line == 2
    assert info.value.path == journal_path(tmp_path)
    assert journal_path(tmp_path) in str(info.value) and "line 2" in str(info.value)
    assert "strict=False" in str(info.value)
    assert isinstance(info.value, ValueError)
    lax = DeadLetterQueue(policy(tmp_path, strict=False))
    assert [e.item for e in lax.get_entries()] == [0, 1, 2, 3]
    assert lax.get_summary()["corrupt_skipped"] == 1
    lax.close()


def _last_record_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


@pytest.mark.parametrize("fmt", list(DLQFormat))
def test_cutting_the_last_record_at_every_byte_never_hides_earlier_entries(tmp_path, fmt):
    source = tmp_path / "source"
    queue = DeadLetterQueue(policy(source, format=fmt))
    earlier = [queue.add(("item", i), ERR, metadata={"i": i}).entry_id for i in range(3)]
    last = queue.add(("last", 3), ERR).entry_id
    queue.close()
    with open(journal_path(source), "rb") as handle:
        data = handle.read()
    start = _last_record_start(data)
    record_length = len(data) - start  # including its newline
    for keep in range(record_length + 1):
        directory = tmp_path / f"cut{keep}"
        directory.mkdir(mode=0o700)
        with open(journal_path(directory), "wb") as handle:
            handle.write(data[: start + keep])
        torn = 0 < keep < record_length - 1  # record_length - 1: complete, only the newline missing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cut = DeadLetterQueue(policy(directory, format=fmt, allow_pickle=True))
        ids = [e.entry_id for e in cut.get_entries()]
        complete = keep >= record_length - 1
        assert ids == earlier + ([last] if complete else []), keep
        torn_warnings = [w for w in caught if "torn last record" in str(w.message)]
        assert len(torn_warnings) == (1 if torn else 0), keep
        new = cut.add(("after the cut", keep), ERR).entry_id
        cut.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the append cut the torn tail: nothing torn is left
            again = DeadLetterQueue(policy(directory, format=fmt, allow_pickle=True))
        assert [e.entry_id for e in again.get_entries()] == [*ids, new], keep
        again.close()


# -- compaction -----------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["clear", "remove", "replay", "prune"])
def test_removal_compacts_by_temp_file_fsync_and_replace(tmp_path, monkeypatch, operation):
    from amorsize import replay_failed_items

    queue = DeadLetterQueue(policy(tmp_path, max_entries=300 if operation == "prune" else 0))
    for i in range(300):
        queue.add(i, ERR)
    calls = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", a, b)), real_replace(a, b)))
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", fd)), real_fsync(fd)))
    if operation == "clear":
        queue.clear()
    elif operation == "remove":
        queue.remove([e.entry_id for e in queue.get_entries()[:10]])
    elif operation == "replay":
        replay_failed_items(queue, lambda item: item)
    else:
        for i in range(300):  # 300 pruned records build up, then one compaction
            queue.add(i, ERR)
    monkeypatch.undo()
    kinds = [c[0] for c in calls]
    assert "replace" in kinds
    replace_at = kinds.index("replace")
    assert "fsync" in kinds[:replace_at]  # the temp file is fsynced before it replaces the journal
    assert "fsync" in kinds[replace_at:]  # and the directory after
    _, temp, target = calls[replace_at]
    assert target == journal_path(tmp_path)
    assert os.path.dirname(temp) == os.fspath(tmp_path)
    # No temp file left (pruning moved the oldest entries to the archive, issue 13).
    archive = ["dlq.pruned.jsonl"] if operation == "prune" else []
    assert sorted(os.listdir(tmp_path)) == sorted([".dlq.lock", "dlq.jsonl", *archive])
    queue.close()


def test_pruning_with_a_journal_keeps_the_newest_on_disk(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="amorsize.dlq"):
        queue = DeadLetterQueue(policy(tmp_path, max_entries=10))
        for i in range(1000):
            queue.add(i, ERR)
    assert [e.item for e in queue.get_entries()] == list(range(990, 1000))
    assert queue.get_summary()["pruned"] == 990
    assert "max_entries=10" in caplog.text
    with open(journal_path(tmp_path), "rb") as handle:
        on_disk = handle.read().count(b"\n")
    assert on_disk <= 10 + 256  # pruned records are compacted away in batches
    queue.close()
    reopened = DeadLetterQueue(policy(tmp_path, max_entries=10))
    assert [e.item for e in reopened.get_entries()] == list(range(990, 1000))
    reopened.close()


# -- fsync modes ------------------------------------------------------------------------


def _count_syncs(monkeypatch) -> list:
    calls: list = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


def test_fsync_always_syncs_every_add(tmp_path, monkeypatch):
    calls = _count_syncs(monkeypatch)
    queue = DeadLetterQueue(policy(tmp_path, fsync="always"))
    for i in range(5):
        queue.add(i, ERR)
    assert len(calls) == 5
    queue.close()


def test_fsync_never_leaves_it_to_the_os_until_close(tmp_path, monkeypatch):
    calls = _count_syncs(monkeypatch)
    queue = DeadLetterQueue(policy(tmp_path, fsync="never"))
    for i in range(50):
        queue.add(i, ERR)
    assert calls == []
    queue.flush()  # an explicit flush always syncs
    assert len(calls) == 1
    queue.close()


def test_fsync_batch_syncs_at_most_once_per_interval_and_on_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "FSYNC_BATCH_INTERVAL_SECONDS", 3600.0)
    calls = _count_syncs(monkeypatch)
    queue = DeadLetterQueue(policy(tmp_path, fsync="batch"))
    for i in range(50):
        queue.add(i, ERR)
    assert calls == []
    queue.flush()
    assert len(calls) == 1
    queue.flush()  # nothing new to sync
    assert len(calls) == 1
    monkeypatch.setattr(journal_module, "FSYNC_BATCH_INTERVAL_SECONDS", 0.0)
    queue.add("x", ERR)
    queue.add("y", ERR)
    assert len(calls) == 3
    queue.add("z", ERR)
    queue.close()
    assert len(calls) == 4


# -- persistence failures ----------------------------------------------------------------


def test_a_failing_disk_never_fails_add(tmp_path, monkeypatch, caplog):
    queue = DeadLetterQueue(policy(tmp_path))
    queue.add("ok", ERR)

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with caplog.at_level(logging.DEBUG, logger="amorsize.dlq"):
        lost = [queue.add(f"while full {i}", ERR) for i in range(3)]
    monkeypatch.undo()
    assert [e.item for e in queue.get_entries()] == ["ok"] + [e.item for e in lost]
    assert queue.get_summary()["persist_errors"] == 3
    warnings_logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings_logged) == 1  # logged once, not once per add
    assert "No space left on device" in warnings_logged[0].getMessage()
    queue.add("after", ERR)  # the next successful append writes the backlog
    queue.close()
    assert reopen_items(tmp_path) == ["ok", "while full 0", "while full 1", "while full 2", "after"]


def test_a_missing_directory_is_recreated_by_the_next_append(tmp_path, caplog):
    import shutil

    directory = tmp_path / "dlq"
    queue = DeadLetterQueue(policy(directory))
    queue.add(1, ERR)
    shutil.rmtree(directory)
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        queue.add(2, ERR)  # the append fails (no directory): kept in memory, logged once
        queue.add(3, ERR)  # recreates the directory and writes the backlog first
    queue.close()
    # Entry 1 went with the deleted directory; the queue does not rewrite its memory.
    assert reopen_items(directory) == [2, 3]
    assert [e.item for e in queue.get_entries()] == [1, 2, 3]
    assert queue.get_summary()["persist_errors"] == 1
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "append" in warning.getMessage() and "FileNotFoundError" in warning.getMessage()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700  # recreated private


# -- several queues on one directory (threads) -------------------------------------------


@pytest.mark.timeout(60)
def test_queues_in_threads_on_one_directory_with_one_compacting(tmp_path):
    import threading

    appenders, per_appender = 3, 200
    errors: list = []

    def append(n: int) -> None:
        try:
            queue = DeadLetterQueue(policy(tmp_path, fsync="never"))
            for i in range(per_appender):
                queue.add(f"a{n}-{i}", ERR)
            queue.close()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    removed: list = []

    def compact() -> None:
        try:
            queue = DeadLetterQueue(policy(tmp_path, fsync="never"))
            for i in range(60):
                doomed = queue.add(f"doomed-{i}", ERR)
                queue.add(f"kept-{i}", ERR)
                queue.remove([doomed.entry_id])
                removed.append(doomed.item)
            queue.close()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(appenders)]
    threads.append(threading.Thread(target=compact))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert not errors
    items = reopen_items(tmp_path)
    expected = {f"a{n}-{i}" for n in range(appenders) for i in range(per_appender)}
    expected |= {f"kept-{i}" for i in range(60)}
    assert set(items) == expected
    assert len(items) == len(expected)


def test_a_compaction_that_keeps_failing_is_not_retried_on_every_add(tmp_path, monkeypatch):
    """Appends work but compaction cannot (no temp file): adds must not re-read the file each time."""
    queue = DeadLetterQueue(policy(tmp_path))
    doomed = [queue.add(i, ERR) for i in range(5)]
    monkeypatch.setattr(journal_module, "write_atomically", _fail_compaction)
    compactions = []
    real_compact = journal_module.Journal.compact

    def counting_compact(self, *args, **kwargs):
        compactions.append(1)
        return real_compact(self, *args, **kwargs)

    monkeypatch.setattr(journal_module.Journal, "compact", counting_compact)
    queue.remove([e.entry_id for e in doomed])
    for i in range(200):
        queue.add(f"new {i}", ERR)
    assert len(compactions) == 2  # the removal, and one retry after the next append
    monkeypatch.undo()
    for i in range(300):
        queue.add(f"more {i}", ERR)  # after another batch of appends the retry succeeds
    queue.close()
    items = reopen_items(tmp_path)
    assert items[:2] == ["new 0", "new 1"] and len(items) == 500


def test_close_retries_a_failed_compaction(tmp_path, monkeypatch):
    queue = DeadLetterQueue(policy(tmp_path))
    doomed = queue.add("doomed", ERR)
    queue.add("kept", ERR)
    monkeypatch.setattr(journal_module, "write_atomically", _fail_compaction)
    queue.remove([doomed.entry_id])
    monkeypatch.undo()
    queue.close()  # no add in between: close() catches up
    assert reopen_items(tmp_path) == ["kept"]
