"""DLQEntry: fields, ids, tracebacks read from the exception itself, dict round trip, equality."""

from __future__ import annotations

import dataclasses
import pickle
import threading
import time

import pytest

from amorsize import DeadLetterQueue, DLQEntry, DLQPolicy, InvalidArgumentError
from amorsize.dlq.entry import REASONS, format_traceback, new_entry_id


def memory_queue(**kw) -> DeadLetterQueue:
    kw.setdefault("max_entries", 0)
    return DeadLetterQueue(DLQPolicy(auto_persist=False, **kw))


def parse(record: str) -> int:
    return int(record)


def raised_and_caught(record: str) -> Exception:
    try:
        parse(record)
    except ValueError as exc:
        return exc
    raise AssertionError("parse() did not fail")


class LoaderError(Exception):
    pass


def load(record: str) -> int:
    try:
        return parse(record)
    except ValueError as exc:
        raise LoaderError(f"cannot load {record!r}") from exc


def test_fields_and_defaults():
    entry = DLQEntry("item", "ValueError", "bad", 12.5)
    assert entry.item == "item"
    assert entry.error_type == "ValueError"
    assert entry.error_message == "bad"
    assert entry.timestamp == 12.5
    assert entry.traceback is None
    assert entry.retry_count == 0
    assert entry.metadata == {}
    assert entry.reason == "exception"
    assert entry.error_qualname is None
    assert isinstance(entry.entry_id, str) and entry.entry_id


def test_reasons():
    assert REASONS == ("exception", "timeout", "worker_crash", "circuit_open", "unpicklable_result",
                       "unpicklable_item")
    queue = memory_queue()
    for reason in REASONS:
        assert queue.add(1, TimeoutError(), reason=reason).reason == reason
    with pytest.raises(InvalidArgumentError, match="reason='lunch'"):
        queue.add(1, ValueError(), reason="lunch")


def test_entry_ids_are_unique_and_sort_by_creation_time():
    ids = [new_entry_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    queue = memory_queue()
    entries = [queue.add(i, ValueError(i)) for i in range(200)]
    by_id = sorted(entries, key=lambda e: e.entry_id)
    assert by_id == entries
    stamps = [e.timestamp for e in by_id]
    assert stamps == sorted(stamps)


def test_entry_ids_are_unique_across_threads():
    out: list = []

    def mint() -> None:
        out.extend(new_entry_id() for _ in range(2000))

    threads = [threading.Thread(target=mint) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(out)) == 8000


def test_from_exception_records_type_message_and_qualified_name():
    queue = memory_queue()
    entry = queue.add({"id": 7}, LoaderError("no"), retry_count=2, metadata={"source": "s3"})
    assert entry.item == {"id": 7}
    assert entry.error_type == "LoaderError"
    assert entry.error_qualname == f"{__name__}.LoaderError"
    assert entry.error_message == "no"
    assert entry.retry_count == 2
    assert entry.metadata == {"source": "s3"}
    assert abs(entry.timestamp - time.time()) < 60
    assert queue.add(1, KeyError("k")).error_qualname == "KeyError"  # builtins stay bare


def test_metadata_is_copied_not_shared():
    meta = {"a": 1}
    entry = memory_queue().add(1, ValueError(), metadata=meta)
    meta["a"] = 2
    assert entry.metadata == {"a": 1}


def test_a_broken_str_does_not_lose_the_failure():
    class Rude(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    entry = memory_queue().add(1, Rude())
    assert entry.error_type == "Rude"
    assert "str() of" in entry.error_message


def test_traceback_of_an_exception_passed_after_its_except_block():
    """The traceback comes from error.__traceback__, so add() works outside `except`."""
    error = raised_and_caught("not a number")
    entry = memory_queue().add("not a number", error)  # no exception is being handled here
    assert entry.traceback is not None
    assert "in parse" in entry.traceback
    assert "in raised_and_caught" in entry.traceback
    assert "ValueError: invalid literal for int()" in entry.traceback


def test_traceback_includes_the_chained_cause():
    try:
        load("x")
    except LoaderError as exc:
        error = exc
    entry = memory_queue().add("x", error)
    assert entry.error_type == "LoaderError"
    text = entry.traceback
    assert "ValueError: invalid literal" in text
    assert "The above exception was the direct cause of the following exception" in text
    assert f"{__name__}.LoaderError: cannot load 'x'" in text or "LoaderError: cannot load 'x'" in text
    assert text.index("ValueError") < text.index("LoaderError: cannot load")


def test_an_exception_that_was_never_raised_has_no_traceback():
    assert format_traceback(ValueError("created, not raised")) is None
    assert memory_queue().add(1, ValueError("x")).traceback is None


def test_include_traceback_false_records_none():
    queue = memory_queue(include_traceback=False)
    assert queue.add(1, raised_and_caught("y")).traceback is None
    entry = DLQEntry(1, "E", "m", 1.0, traceback="text")
    queue.add_entry(entry)
    assert queue.get_entries()[-1].traceback is None


def test_to_dict_from_dict_round_trip():
    entry = memory_queue().add((1, "a"), raised_and_caught("z"), retry_count=3, metadata={"k": [1]},
                               reason="timeout")
    data = entry.to_dict()
    assert set(data) == {"entry_id", "item", "error_type", "error_qualname", "error_message", "reason",
                         "timestamp", "traceback", "retry_count", "metadata"}
    assert DLQEntry.from_dict(data) == entry
    assert DLQEntry.from_dict(dict(data)).to_dict() == data


def test_from_dict_accepts_dicts_from_older_versions():
    old = {"item": 5, "error_type": "ValueError", "error_message": "m", "timestamp": 3.0,
           "traceback": None, "retry_count": 1, "metadata": {}}
    entry = DLQEntry.from_dict(old)
    assert (entry.item, entry.error_type, entry.retry_count) == (5, "ValueError", 1)
    assert entry.reason == "exception"
    assert entry.error_qualname is None
    assert entry.entry_id


def test_equality_is_by_value():
    a = DLQEntry([1], "E", "m", 1.0, entry_id="x")
    b = DLQEntry([1], "E", "m", 1.0, entry_id="x")
    assert a == b and a is not b
    assert a != dataclasses.replace(b, retry_count=1)
    assert a != dataclasses.replace(b, entry_id="y")
    assert a != dataclasses.replace(b, item=[2])


def test_entries_pickle():
    entry = memory_queue().add({"k": 1}, raised_and_caught("p"), metadata={"m": 2}, reason="worker_crash")
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(entry, protocol)) == entry
