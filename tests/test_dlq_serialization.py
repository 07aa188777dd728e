"""How items survive the journal: JSON-native, tagged cloudpickle, placeholders, pickle opt-in."""

from __future__ import annotations

import pytest

from amorsize import DeadLetterQueue, DLQFormat, DLQPolicy
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
    assert isinstance(items[2], (list, UnserializableItem))


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
