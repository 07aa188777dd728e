"""How items survive the journal: JSON-native, tagged cloudpickle, placeholders, pickle opt-in."""

from __future__ import annotations

import json
import math
import pickle

import pytest

from amorsize import DeadLetterQueue, DLQFormat, DLQPolicy, PickleNotAllowedError
from amorsize.serialization import (
    PickledPayload,
    UnserializableItem,
    decode_value,
    encode_value,
    is_json_native,
)

ERR = ValueError("boom")


def reopen(directory, **kw) -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0, **kw))


@pytest.mark.parametrize("fmt", list(DLQFormat))
def test_self_referencing_items_do_not_make_add_raise(tmp_path, fmt):
    looped_list: list = []
    looped_list.append(looped_list)
    looped_dict: dict = {}
    looped_dict["self"] = looped_dict
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    queue = reopen(tmp_path, format=fmt)
    queue.add(looped_list, ERR)
    queue.add(looped_dict, ERR)
    queue.add(deep, ERR)  # too deep for JSON and for pickle: kept as its repr
    queue.close()
    items = [e.item for e in reopen(tmp_path, format=fmt, allow_pickle=True).get_entries()]
    assert items[0][0] is items[0]
    assert items[1]["self"] is items[1]
    # 5000 levels exceed the recursion limit of json and of pickle alike: the repr is kept.
    assert isinstance(items[2], UnserializableItem)
    assert items[2].type_name == "list" and items[2].repr.startswith("[[[")


def test_is_json_native_is_false_for_a_container_holding_itself():
    looped: list = []
    looped.append(looped)
    assert not is_json_native(looped)
    codec, payload = encode_value(looped)
    assert codec == "cloudpickle"
    restored = decode_value(codec, payload, allow_pickle=True)
    assert restored[0] is restored


def test_placeholders_are_written_back_byte_for_byte_with_a_stable_repr(tmp_path):
    """A queue without allow_pickle re-saves pickled items and metadata it could not load."""
    first = reopen(tmp_path)
    first.add((1, 2), ERR, metadata={"attempted_at": {3, 4}})
    first.close()
    other = tmp_path / "copy.jsonl"
    for _ in range(3):  # save and reload without pickle, repeatedly
        blind = DeadLetterQueue(DLQPolicy(directory=tmp_path, auto_persist=False))
        blind.load()
        entry = blind.get_entries()[0]
        assert isinstance(entry.item, PickledPayload)
        assert repr(entry.item) == "<pickled item, not loaded: (1, 2)>"
        blind.save(other)
        blind.save(tmp_path / "dlq.jsonl")
    trusting = DeadLetterQueue(DLQPolicy(directory=tmp_path, auto_persist=False, allow_pickle=True))
    trusting.load(other)
    entry = trusting.get_entries()[0]
    assert entry.item == (1, 2)
    assert entry.metadata == {"attempted_at": {3, 4}}


class Point:
    """A custom class at module level (pickled by reference)."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


NON_JSON_ITEMS = {
    "tuple": (1, "a", (2.5,)),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a"}),
    "bytes": b"\x00\xffraw",
    "bytearray": bytearray(b"xy"),
    "non-str keys": {1: "one", (2, 3): "pair"},
    "custom class": Point(1, 2),
    "nan": float("nan"),
    "inf": float("inf"),
    "huge int": 10**5000,
    "complex": 1 + 2j,
    "list of tuples": [(1, 2), (3, 4)],
    # JSON would join the two code points into one character ('\U00010000').
    "surrogate pair as two code points": "\ud800\udc00",
    "dict key with a surrogate pair": {"k\udbff\udfff": 1},
}


def json_format_round_trip(tmp_path, item, **policy_kw):
    queue = reopen(tmp_path)
    queue.add(item, ERR)
    queue.close()
    reopened = reopen(tmp_path, **policy_kw)
    (entry,) = reopened.get_entries()
    reopened.close()
    return entry


@pytest.mark.parametrize("name", sorted(NON_JSON_ITEMS))
def test_json_format_keeps_non_json_items_losslessly_with_allow_pickle(tmp_path, name):
    item = NON_JSON_ITEMS[name]
    entry = json_format_round_trip(tmp_path, item, allow_pickle=True)
    assert type(entry.item) is type(item)
    assert pickle.dumps(entry.item) == pickle.dumps(item)  # NaN-safe equality
    with open(tmp_path / "dlq.jsonl", encoding="ascii") as handle:
        record = json.loads(handle.readline())
    assert record["item_codec"] == "cloudpickle"
    assert record["item_repr"]  # listing the file shows what the item was


def test_json_format_keeps_lambdas_and_local_classes_with_allow_pickle(tmp_path):
    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

    queue = reopen(tmp_path)
    queue.add(lambda x: x * 3, ERR)
    queue.add(Local(7), ERR)
    queue.close()
    func, local = (e.item for e in reopen(tmp_path, allow_pickle=True).get_entries())
    assert func(2) == 6
    assert type(local).__name__ == "Local" and local.v == 7


@pytest.mark.parametrize(
    "item",
    [None, True, 0, -(2**63), 2**200, 1.5, -0.0, 1e308, "text", "\ud800 lone surrogate", "",
     [], {}, [1, [2, {"k": None}]], {"nested": {"list": [1.25, "x", False]}}],
)
def test_json_native_items_are_stored_as_json_and_come_back_exactly(tmp_path, item):
    entry = json_format_round_trip(tmp_path, item)  # no pickle needed
    assert type(entry.item) is type(item)
    assert entry.item == item
    if isinstance(item, float):
        assert math.copysign(1.0, entry.item) == math.copysign(1.0, item)
    with open(tmp_path / "dlq.jsonl", encoding="ascii") as handle:
        record = json.loads(handle.readline())
    assert record["item_codec"] == "json"
    assert "item_repr" not in record


def test_without_allow_pickle_items_come_back_as_readable_placeholders(tmp_path):
    entry = json_format_round_trip(tmp_path, Point(3, 4))
    placeholder = entry.item
    assert isinstance(placeholder, PickledPayload)
    assert repr(placeholder) == "<pickled item, not loaded: Point(3, 4)>"
    with pytest.raises(PickleNotAllowedError) as info:
        placeholder.load()
    assert "allow_pickle=True" in str(info.value)
    assert isinstance(info.value, PermissionError)
    assert pickle.loads(placeholder.data) == Point(3, 4)  # the bytes are all there
    summary = reopen(tmp_path).get_summary()
    assert summary["total_entries"] == 1


def test_placeholders_survive_a_save_by_a_queue_that_cannot_load_them(tmp_path):
    queue = reopen(tmp_path)
    queue.add(Point(5, 6), ERR)
    queue.add("plain", ERR)
    queue.close()
    blind = reopen(tmp_path)
    blind.remove([blind.get_entries()[1].entry_id])  # compaction rewrites the file
    blind.add({1, 2}, ERR)
    blind.close()
    items = [e.item for e in reopen(tmp_path, allow_pickle=True).get_entries()]
    assert items == [Point(5, 6), {1, 2}]


def test_pickle_format_pickles_every_item_lambdas_and_local_classes(tmp_path):
    class Local:
        def __init__(self) -> None:
            self.v = "local"

    items = [None, "text", {"k": [1]}, (1, 2), Local(), lambda: "called", {3}]
    queue = reopen(tmp_path, format=DLQFormat.PICKLE)
    for item in items:
        queue.add(item, ERR, metadata={"tag": (1, 2)})
    queue.close()
    with open(tmp_path / "dlq.jsonl", encoding="ascii") as handle:
        records = [json.loads(line) for line in handle]
    assert {r["item_codec"] for r in records} == {"cloudpickle"}
    assert {r["error_type"] for r in records} == {"ValueError"}  # error fields stay readable
    loaded = [e.item for e in reopen(tmp_path, format=DLQFormat.PICKLE).get_entries()]
    assert loaded[:4] == items[:4]
    assert loaded[4].v == "local"
    assert loaded[5]() == "called"
    assert loaded[6] == {3}
    assert reopen(tmp_path, format=DLQFormat.PICKLE).get_entries()[0].metadata == {"tag": (1, 2)}


def test_a_pickle_format_file_opened_without_allow_pickle_gives_placeholders(tmp_path):
    queue = reopen(tmp_path, format=DLQFormat.PICKLE)
    queue.add("x", ERR)
    queue.close()
    (entry,) = reopen(tmp_path, format=DLQFormat.PICKLE, allow_pickle=False).get_entries()
    assert isinstance(entry.item, PickledPayload)
    assert repr(entry.item) == "<pickled item, not loaded: 'x'>"


def test_values_nothing_can_pickle_are_kept_as_their_repr(tmp_path):
    import threading

    lock = threading.Lock()
    queue = reopen(tmp_path, format=DLQFormat.PICKLE)
    entry = queue.add(lock, ERR)  # add() must not fail, the entry stays in memory as it is
    assert entry.item is lock
    queue.close()
    (stored,) = reopen(tmp_path, format=DLQFormat.PICKLE).get_entries()
    assert isinstance(stored.item, UnserializableItem)
    assert "lock" in stored.item.repr.lower()
    assert stored.item.type_name == "lock"


def test_placeholders_and_dlq_errors_pickle():
    """They can cross a process boundary (a shared queue, a worker's result)."""
    from amorsize import DLQCorruptError, DLQFileNotFoundError

    placeholder = PickledPayload(pickle.dumps((1, 2)), "(1, 2)")
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(placeholder, protocol))
        assert copy == placeholder and repr(copy) == repr(placeholder)
    corrupt = pickle.loads(pickle.dumps(DLQCorruptError("/x/dlq.jsonl", 7, "bad")))
    assert (corrupt.path, corrupt.line, corrupt.detail) == ("/x/dlq.jsonl", 7, "bad")
    assert str(corrupt) == str(DLQCorruptError("/x/dlq.jsonl", 7, "bad"))
    missing = pickle.loads(pickle.dumps(DLQFileNotFoundError("DLQ file not found: 'x'")))
    assert isinstance(missing, FileNotFoundError) and "DLQ file not found" in str(missing)
