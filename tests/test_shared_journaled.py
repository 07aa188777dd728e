"""Workers that write their failures to the shared queue's files themselves (issue 18).

The hook writes its failure's line into its own file in the manager's inbox
before it returns and sends nothing; the manager moves the lines into the journal
before every call that reads the queue (amorsize.dlq.inbox). Its view, its policy
(max_entries, retention, dedupe) and its readers must not notice the difference.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from typing import Any, List

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, Failure, SharedDeadLetterQueue
from amorsize.dlq import capture
from amorsize.dlq.policy import DLQFormat

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaked_children")]


def fail(x: Any) -> Any:
    raise ValueError(f"bad {x}")


def journal_ids(directory: Any) -> List[str]:
    path = os.path.join(directory, "dlq.jsonl")
    with open(path, "rb") as handle:
        return [json.loads(line)["entry_id"] for line in handle]


def inbox_ids(inbox: str) -> List[str]:
    """The ids in the workers' files of a manager's inbox (amorsize.dlq.inbox)."""
    ids = []
    for name in sorted(os.listdir(inbox)):
        if name.endswith(".jsonl"):
            with open(os.path.join(inbox, name), "rb") as handle:
                ids += [json.loads(line)["entry_id"] for line in handle]
    return ids


def test_the_hook_journals_itself_only_where_its_line_is_what_the_manager_would_write(tmp_path):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "a")) as plain:
        inbox, fsync = plain.capture(fail).journal
        assert os.path.dirname(inbox) == str(tmp_path / "a") and fsync == "batch"
        assert os.path.basename(inbox).startswith(".inbox-")
        assert oct(os.stat(inbox).st_mode & 0o777) == "0o700"
    for policy in (
        DLQPolicy(directory=tmp_path / "b", dedupe=True),
        DLQPolicy(directory=tmp_path / "c", format=DLQFormat.PICKLE),
        DLQPolicy(directory=tmp_path / "d", auto_persist=False),
    ):
        with SharedDeadLetterQueue(policy) as queue:
            hook = queue.capture(fail)
            assert hook.journal is None
            assert not hook(1) and [e.item for e in queue.get_entries()] == [1]
    # A TCP lane: a returned send() may still be on its way, so the manager writes.
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "e"), address=("127.0.0.1", 0)) as tcp:
        assert tcp.capture(fail).journal is None
        assert not tcp.capture(fail)(2) and tcp.size() == 1


def test_the_line_is_in_the_inbox_when_the_hook_returns_then_in_the_journal(tmp_path):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        hook = queue.capture(fail)
        result = hook("x")
        assert isinstance(result, Failure)
        assert inbox_ids(hook.journal[0]) == [result.entry_id]  # read from disk, no manager call
        (segment,) = [n for n in os.listdir(hook.journal[0]) if n.endswith(".jsonl")]
        assert oct(os.stat(os.path.join(hook.journal[0], segment)).st_mode & 0o777) == "0o600"
        (entry,) = queue.get_entries()  # the manager moved it into the journal first
        assert journal_ids(tmp_path) == [result.entry_id]
        assert entry.entry_id == result.entry_id and entry.item == "x"
        assert entry.error_message == "bad x" and "fail" in (entry.traceback or "")


def test_readers_see_every_failure_of_a_pool_at_once(tmp_path, start_method):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        with multiprocessing.get_context(start_method).Pool(2) as pool:
            for round_ in range(2):
                results = pool.map(queue.capture(fail), range(round_ * 200, (round_ + 1) * 200),
                                   chunksize=7)
                # No wait: size() drains what the workers sent before their hooks returned.
                assert queue.size() == 200 * (round_ + 1)
                assert {r.entry_id for r in results} <= set(journal_ids(tmp_path))
        assert sorted(e.item for e in queue.get_entries()) == list(range(400))
        assert queue.get_summary()["error_types"] == {"ValueError": 400}
        assert queue.clear() == 400
        assert journal_ids(tmp_path) == []
    assert DeadLetterQueue(DLQPolicy(directory=tmp_path)).size() == 0


def test_max_entries_prunes_lines_the_workers_wrote(tmp_path):
    policy = DLQPolicy(directory=tmp_path, max_entries=5)
    with SharedDeadLetterQueue(policy) as queue:
        hook = queue.capture(fail)
        ids = [hook(i).entry_id for i in range(20)]
        summary = queue.get_summary()
        assert (summary["total_entries"], summary["pruned"]) == (5, 15)
        assert [e.item for e in queue.get_entries()] == list(range(15, 20))
    with open(tmp_path / "dlq.pruned.jsonl", "rb") as handle:
        assert [json.loads(line)["entry_id"] for line in handle] == ids[:15]
    reopened = DeadLetterQueue(policy)
    assert [e.entry_id for e in reopened.get_entries()] == ids[15:]


def test_retention_and_dedupe_work_on_the_lane(tmp_path):
    # Both read an entry's fields; the lane kept undecoded lines (an AttributeError before).
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "age", max_age_seconds=3600)) as aged:
        hook = aged.capture(fail)
        assert not hook(1) and not hook(2)
        assert [e.item for e in aged.get_entries()] == [1, 2]
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "dd", dedupe=True)) as deduped:
        hook = deduped.capture(fail)
        for item in (1, 2, 1, 1):
            assert not hook(item)
        entries = deduped.get_entries()
        assert sorted(e.item for e in entries) == [1, 2]
        assert {e.item: e.metadata["failures"] for e in entries} == {1: 3, 2: 1}


def test_a_worker_that_cannot_append_lets_the_manager_write(tmp_path, monkeypatch):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        hook = queue.capture(fail)
        assert not hook(0)  # connected, its appender made
        appender = capture._appenders[hook.ingest_address]

        def full_disk(line: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(appender, "append_line", full_disk)
        result = hook(1)
        assert isinstance(result, Failure)
        assert journal_ids(tmp_path)[-1] == result.entry_id  # written by the manager
        assert [e.item for e in queue.get_entries()] == [0, 1]


def test_lines_appended_after_another_process_rewrote_the_journal_are_taken_once(tmp_path):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        hook = queue.capture(fail)
        first = hook(1).entry_id
        assert not hook(2) and queue.size() == 2
        with DeadLetterQueue(DLQPolicy(directory=tmp_path)) as other:  # compacts: a new file
            assert other.remove([first]) == 1
        assert not hook(3)
        # The manager reads the new file whole and takes only what it never had (its
        # own view keeps entry 1, as any queue's memory keeps what it loaded).
        assert [e.item for e in queue.get_entries()] == [1, 2, 3]
        assert not hook(4)
        assert [e.item for e in queue.get_entries()] == [1, 2, 3, 4]
    # On disk: what the other process left, and what the workers appended after it.
    assert [e.item for e in DeadLetterQueue(DLQPolicy(directory=tmp_path)).get_entries()] == [2, 3, 4]


def _entry(i: int) -> Any:
    from amorsize.dlq.entry import DLQEntry

    return DLQEntry.from_exception(i, ValueError(i))


def test_flush_and_close_fsync_what_the_workers_appended(tmp_path, monkeypatch):
    from amorsize.dlq._manager import _ServerQueue
    from amorsize.dlq.records import encode_entry

    queue = _ServerQueue(DLQPolicy(directory=tmp_path))
    synced: List[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    with open(tmp_path / "dlq.jsonl", "ab") as handle:  # what a worker does
        handle.write(encode_entry(_entry(1), pickle_everything=False))
    queue.flush()
    assert len(synced) == 1  # the queue itself appended nothing: it would not have synced
    queue.flush()
    assert len(synced) == 1  # nothing new since
    assert [e.item for e in queue.get_entries()] == [1]
    queue.close()


def test_an_unreadable_line_from_elsewhere_is_skipped_and_the_journal_stays_usable(tmp_path, caplog):
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        hook = queue.capture(fail)
        assert not hook(1)
        with open(tmp_path / "dlq.jsonl", "ab") as handle:  # an id, but not a record
            handle.write(b'{"entry_id":"0123456789abcdef0123456789abcdef","v":1}\n')
        assert not hook(2)  # the lock was not left held
        assert [e.item for e in queue.get_entries()] == [1, 2]
        assert queue.get_summary()["corrupt_skipped"] == 1
        assert not hook(3) and len(queue) == 3


def test_a_relative_directory_is_the_managers_wherever_the_hook_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with SharedDeadLetterQueue(DLQPolicy(directory="rel")) as queue:
        hook = queue.capture(fail)
        assert os.path.dirname(hook.journal[0]) == str(tmp_path / "rel")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)  # a worker (or a connected process) may run anywhere
        result = hook(1)
        assert inbox_ids(hook.journal[0]) == [result.entry_id]
        assert not (elsewhere / "rel").exists()
        connected = SharedDeadLetterQueue.connect(queue.address, queue.authkey)
        try:
            assert connected.capture(fail).journal == hook.journal
        finally:
            connected.close()
        assert [e.item for e in queue.get_entries()] == [1]


def test_the_manager_never_reads_a_journal_replaced_by_a_symlink(tmp_path):
    # Another queue's journal, linked where this queue's journal was: the manager reads
    # what workers appended with O_NOFOLLOW, so it reads nothing from the link.
    other = DeadLetterQueue(DLQPolicy(directory=tmp_path / "other"))
    for i in range(3):
        other.add({"other": i}, ValueError("not ours"))
    other.close()
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "a")) as queue:
        hook = queue.capture(fail)
        assert not hook(1)
        assert queue.size() == 1
        journal = tmp_path / "a" / "dlq.jsonl"
        journal.unlink()
        journal.symlink_to(tmp_path / "other" / "dlq.jsonl")
        assert queue.size() == 1
        assert [e.item for e in queue.get_entries()] == [1]
