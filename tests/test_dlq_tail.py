"""The manager's read of what workers appended: whole lines, each once, writers not held up."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, List

from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.ingest import JournalLine
from amorsize.dlq.journal import Journal
from amorsize.dlq.records import encode_entry
from amorsize.dlq.tail import TailedJournal


def entry(n: int) -> DLQEntry:
    return DLQEntry(item=n, error_type="ValueError", error_message=f"bad {n}", timestamp=1.0)


def writer_may_append(journal: Journal) -> bool:
    """Whether another process's append could take the journal's lock right now."""
    fd = os.open(journal.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it
    return True


def test_workers_can_append_while_the_manager_takes_their_lines(tmp_path: Path) -> None:
    directory = str(tmp_path / "dlq")
    os.makedirs(directory, mode=0o700)
    taken: List[Any] = []

    def take(lines: List[JournalLine], replaced: bool) -> None:
        taken.append(([x.entry_id for x in lines], replaced, writer_may_append(manager)))

    manager = TailedJournal(directory, fsync="never", strict=True, take=take, known=lambda _: False)
    worker = Journal(directory, fsync="never")
    entries = [entry(n) for n in range(3)]
    lines = [encode_entry(e, pickle_everything=False) for e in entries]
    ids = [e.entry_id for e in entries]
    worker.append(lines[:2])
    manager.tail()
    worker.append(lines[2:])
    manager.tail()
    manager.tail()  # nothing new: nothing taken
    assert [t[0] for t in taken] == [ids[:2], ids[2:]]
    assert [t[1] for t in taken] == [True, False]  # the first read is of a file it never saw
    # Parsing and taking happen after the lock is released: an append need not wait.
    assert all(t[2] for t in taken), taken
    worker.close()
    manager.close()


def test_lines_moved_into_the_journal_are_taken_even_if_saving_offsets_fails(tmp_path: Path,
                                                                             monkeypatch: Any) -> None:
    """Before the fix, an OSError after the append (saving the inbox's offsets, a full
    disk) skipped the take: the lines were in the journal, the offsets moved past them,
    and the manager's memory never held them (readers missed them until a reopen)."""
    from amorsize.dlq.inbox import Inbox, SegmentWriter

    directory = str(tmp_path / "dlq")
    os.makedirs(directory, mode=0o700)
    taken: List[str] = []
    manager = TailedJournal(directory, fsync="never", strict=True,
                            take=lambda lines, replaced: taken.extend(x.entry_id for x in lines),
                            known=lambda entry_id: entry_id in taken)
    assert manager.inbox is not None
    writer = SegmentWriter(manager.inbox.path, fsync="never")
    entries = [entry(n) for n in range(3)]
    for e in entries:
        writer.append_line(encode_entry(e, pickle_everything=False))

    def full_disk(self: Inbox, *, durable: bool = True) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Inbox, "save_offsets", full_disk)
    manager.tail()
    assert taken == [e.entry_id for e in entries]
    manager.tail()  # read again from where the commit left off: nothing twice
    assert taken == [e.entry_id for e in entries]
    monkeypatch.undo()
    writer.close()
    manager.close()
    with open(os.path.join(directory, "dlq.jsonl"), "rb") as handle:
        assert len(handle.read().splitlines()) == 3
