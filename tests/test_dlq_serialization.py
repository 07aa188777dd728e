"""How items survive the journal: JSON-native, tagged cloudpickle, placeholders, pickle opt-in."""

from __future__ import annotations

import pytest

from amorsize import DeadLetterQueue, DLQFormat, DLQPolicy
from amorsize.serialization import UnserializableItem, decode_value, encode_value, is_json_native

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
