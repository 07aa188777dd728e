"""The queue against a model (an ordered dict entry_id -> entry), in both formats.

Steps: add, extend, add_entry of an updated entry, clear, remove, filter, replay,
save, load of the queue's own journal, and reopen (a fresh queue on the directory
must hold exactly the model). Small max_entries values exercise pruning.

Faults on disk: a torn tail (a writer killed mid-record), a corrupt line in the
middle (read with ``strict=False``: skipped and counted), and a second writer on
the same directory whose appends this queue only sees once it loads or reopens.
The machine keeps two models: ``model`` (this queue's memory) and, for unbounded
queues, ``disk`` (what a fresh queue on the directory reads).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Dict, List

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from amorsize import DeadLetterQueue, DLQEntry, DLQFormat, DLQPolicy, replay_failed_items
from amorsize.dlq.entry import new_entry_id

# Torn tails are the point of a rule here; reopen() asserts exactly when one is reported.
pytestmark = pytest.mark.filterwarnings("ignore:.*torn last record:RuntimeWarning")

#: The start of a real record: what a writer killed mid-write leaves behind.
TORN_BYTES = b'{"entry_id":"torn","v":1,"error_type":"ValueErr'
#: A complete line that is no record at all (nor starts like one).
CORRUPT_LINE = b"\x00 not a record \x00\n"


class FirstError(Exception):
    pass


class SecondError(Exception):
    pass


class StillFailing(Exception):
    pass


ERROR_KINDS = {"ValueError": ValueError, "FirstError": FirstError, "SecondError": SecondError}

# Payloads mix JSON-native values with values the JSON format must pickle.
PAYLOADS = st.one_of(
    st.none(), st.integers(), st.text(max_size=8), st.floats(allow_nan=False),
    st.tuples(st.integers(), st.text(max_size=3)), st.frozensets(st.integers(), max_size=3),
    st.binary(max_size=6), st.lists(st.integers(), max_size=3),
)
REASONS = st.sampled_from(["exception", "timeout", "worker_crash"])


def raised(kind: type, message: str) -> BaseException:
    try:
        raise kind(message)
    except kind as exc:
        return exc


class DLQMachine(RuleBasedStateMachine):
    FORMAT = DLQFormat.JSON

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="dlq-machine-")
        self.model: collections.OrderedDict[str, DLQEntry] = collections.OrderedDict()
        self.counter = 0
        self.max_entries = 0
        self.pruned = 0
        self.queue: Any = None
        self.strict = True
        # What a fresh queue on the directory reads (kept for unbounded queues only).
        self.disk: collections.OrderedDict[str, DLQEntry] = collections.OrderedDict()
        self.torn = False  # the journal ends with a torn record
        self.corrupt_lines = 0  # complete garbage lines in the journal
        self.tail_is_garbage = False  # its last complete line is one of them
        self.skipped_seen = 0  # corrupt records this queue instance skipped while reading
        # Pruned entries wait in memory for the next compaction to move them to the
        # archive; close() runs that compaction (memory and disk hold the same live entries).
        self.archive_pending = False

    # -- helpers ------------------------------------------------------------------

    def policy(self) -> DLQPolicy:
        return DLQPolicy(directory=self.directory, format=self.FORMAT, max_entries=self.max_entries,
                         allow_pickle=True, fsync="never", strict=self.strict)

    @property
    def journal(self) -> str:
        return os.path.join(self.directory, "dlq.jsonl")

    def counted_corrupt(self) -> int:
        """Corrupt records a read skips: a garbage last line reads as a torn tail instead."""
        return self.corrupt_lines - (1 if self.tail_is_garbage and not self.torn else 0)

    def appended(self, entries: List[DLQEntry]) -> None:
        """This queue appended ``entries``: the append cut any torn tail first."""
        for entry in entries:
            self.disk[entry.entry_id] = entry  # a newer line wins, at the first one's place
        if entries:
            self.torn = self.tail_is_garbage = False

    def compacted(self, drop: List[str]) -> None:
        """The journal was rewritten without ``drop``; unreadable lines went too (logged, counted)."""
        for entry_id in drop:
            self.disk.pop(entry_id, None)
        self.torn = self.tail_is_garbage = False
        self.corrupt_lines = 0
        self.archive_pending = False

    def next_item(self, payload: Any) -> Dict[str, Any]:
        self.counter += 1
        return {"n": self.counter, "v": payload}

    def prune_model(self) -> None:
        while self.max_entries and len(self.model) > self.max_entries:
            self.model.popitem(last=False)
            self.pruned += 1
            self.archive_pending = True

    def reopen(self) -> None:
        self.queue.close()
        if self.archive_pending:
            self.compacted([])  # close() archived the pruned entries by a compaction
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.queue = DeadLetterQueue(self.policy())
        torn_warnings = [w for w in caught if "torn last record" in str(w.message)]
        assert len(torn_warnings) == (1 if self.torn or self.tail_is_garbage else 0), caught
        self.pruned = self.queue.get_summary()["pruned"]  # leftovers of batched pruning on disk
        self.skipped_seen = self.counted_corrupt()
        self.archive_pending = self.pruned > 0  # pruned while reading: not archived yet
        if not self.max_entries:
            self.model = collections.OrderedDict(self.disk)  # the fresh queue holds the disk

    # -- rules --------------------------------------------------------------------

    @initialize(max_entries=st.sampled_from([0, 0, 3, 6]), strict=st.booleans())
    def open_queue(self, max_entries: int, strict: bool) -> None:
        self.max_entries = max_entries
        self.strict = strict
        self.queue = DeadLetterQueue(self.policy())

    @rule(payload=PAYLOADS, kind=st.sampled_from(sorted(ERROR_KINDS)), retries=st.integers(0, 3),
          reason=REASONS)
    def add(self, payload: Any, kind: str, retries: int, reason: str) -> None:
        item = self.next_item(payload)
        error = raised(ERROR_KINDS[kind], f"failed on {item['n']}")
        entry = self.queue.add(item, error, retry_count=retries, metadata={"n": item["n"]},
                               reason=reason)
        assert entry.item == item and entry.error_type == kind and entry.reason == reason
        assert entry.traceback is not None and kind in entry.traceback
        self.model[entry.entry_id] = entry
        self.appended([entry])
        self.prune_model()

    @rule(payloads=st.lists(PAYLOADS, max_size=4))
    def extend(self, payloads: List[Any]) -> None:
        batch = [
            DLQEntry(self.next_item(p), "BatchError", "from a batch", time.time(), retry_count=1,
                     entry_id=new_entry_id())
            for p in payloads
        ]
        assert self.queue.extend(batch) == len(batch)
        for entry in batch:
            self.model[entry.entry_id] = entry
        self.appended(batch)
        self.prune_model()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), retries=st.integers(0, 9))
    def add_entry_updates_in_place(self, data: st.DataObject, retries: int) -> None:
        entry_id = data.draw(st.sampled_from(list(self.model)))
        newer = dataclasses.replace(self.model[entry_id], retry_count=retries, error_message="updated")
        self.queue.add_entry(newer)
        self.model[entry_id] = newer
        self.appended([newer])

    @rule()
    def clear(self) -> None:
        assert self.queue.clear() == len(self.model)
        self.compacted(list(self.model))
        self.model.clear()

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(list(self.model)), unique=True)) if self.model else []
        assert self.queue.remove([*ids, "not-an-id"]) == len(ids)
        for entry_id in ids:
            del self.model[entry_id]
        if ids:
            self.compacted(ids)

    @rule(kind=st.sampled_from([*sorted(ERROR_KINDS), "BatchError", "StillFailing", "Nope"]),
          reason=st.none() | REASONS)
    def filter(self, kind: str, reason: Any) -> None:
        expected = [e for e in self.model.values()
                    if kind in (e.error_type, e.error_qualname) and reason in (None, e.reason)]
        assert self.queue.filter(error_type=kind, reason=reason) == expected

    @rule(data=st.data(), clear_on_success=st.booleans())
    def replay(self, data: st.DataObject, clear_on_success: bool) -> None:
        numbers = [e.item["n"] for e in self.model.values()]
        failing = data.draw(st.sets(st.sampled_from(numbers))) if numbers else set()

        def func(item: Dict[str, Any]) -> int:
            if item["n"] in failing:
                raise StillFailing(f"still {item['n']}")
            return item["n"] * 2

        results, still_failed = replay_failed_items(self.queue, func, clear_on_success=clear_on_success)
        assert results == [n * 2 for n in numbers if n not in failing]
        assert [e.item["n"] for e in still_failed] == [n for n in numbers if n in failing]
        for entry in still_failed:
            before = self.model[entry.entry_id]
            assert entry.retry_count == before.retry_count + 1
            assert entry.error_type == "StillFailing"
            assert entry.error_message == f"still {entry.item['n']}"
            assert entry.item == before.item
            self.model[entry.entry_id] = entry
        recovered = [i for i, e in self.model.items() if e.item["n"] not in failing]
        if still_failed or (clear_on_success and recovered):
            for entry in still_failed:
                if entry.entry_id in self.disk:
                    self.disk[entry.entry_id] = entry
            self.compacted(recovered if clear_on_success else [])
        if clear_on_success:
            for entry_id in recovered:
                del self.model[entry_id]

    @rule()
    def save(self) -> None:
        path = self.queue.save()
        assert path.endswith("dlq.jsonl")
        self.compacted([])

    @rule()
    def load_own_journal(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a torn tail: checked on reopen
                self.queue.load()
        except FileNotFoundError:
            assert not self.model or not self.queue.policy.auto_persist
            return
        self.skipped_seen += self.counted_corrupt()
        if not self.max_entries:
            for entry_id, entry in self.disk.items():  # others' appends join at the end
                self.model[entry_id] = entry
        self.prune_model()

    @precondition(lambda self: not self.torn)
    @rule()
    def tear_tail(self) -> None:
        """A writer was killed mid-record: the journal ends with part of a line."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with open(self.journal, "ab") as handle:
            handle.write(TORN_BYTES)
        self.torn = True

    @precondition(lambda self: not self.strict and not self.torn)
    @rule()
    def corrupt_a_line(self) -> None:
        """A complete line that is not a record (read with strict=False: skipped, counted)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with open(self.journal, "ab") as handle:
            handle.write(CORRUPT_LINE)
        self.corrupt_lines += 1
        self.tail_is_garbage = True

    @precondition(lambda self: not self.max_entries)
    @rule(payloads=st.lists(PAYLOADS, min_size=1, max_size=3))
    def second_writer_appends(self, payloads: List[Any]) -> None:
        """Another queue on the same directory adds entries this one has not loaded."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            other = DeadLetterQueue(self.policy())
        batch = [
            DLQEntry(self.next_item(p), "OtherWriterError", "from another writer", time.time(),
                     entry_id=new_entry_id())
            for p in payloads
        ]
        assert other.extend(batch) == len(batch)
        other.close()
        self.appended(batch)

    @rule()
    def reopen_from_disk(self) -> None:
        self.reopen()
        assert self.queue.get_entries() == list(self.model.values())
        if not self.max_entries:
            assert self.queue.get_entries() == list(self.disk.values())

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        if self.queue is None:
            return
        assert self.queue.get_entries() == list(self.model.values())
        assert len(self.queue) == len(self.model)
        summary = self.queue.get_summary()
        assert summary["total_entries"] == len(self.model)
        assert summary["pruned"] == self.pruned
        assert summary["persist_errors"] == 0
        assert summary["corrupt_skipped"] == self.skipped_seen

    def teardown(self) -> None:
        try:
            if self.queue is not None:
                self.reopen()
                assert self.queue.get_entries() == list(self.model.values())
                self.queue.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


class PickleDLQMachine(DLQMachine):
    FORMAT = DLQFormat.PICKLE


MACHINE_SETTINGS = settings(max_examples=30, stateful_step_count=30, deadline=None)

TestJSONQueueAgainstModel = DLQMachine.TestCase
TestJSONQueueAgainstModel.settings = MACHINE_SETTINGS
TestPickleQueueAgainstModel = PickleDLQMachine.TestCase
TestPickleQueueAgainstModel.settings = MACHINE_SETTINGS
