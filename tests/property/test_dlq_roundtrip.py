"""Round-trip properties: entries through the journal and a reopened queue, values through the codec."""

from __future__ import annotations

import json
import math
import re
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from amorsize import DeadLetterQueue, DLQEntry, DLQFormat, DLQPolicy
from amorsize.dlq.entry import REASONS
from amorsize.dlq.records import decode_record, encode_entry
from amorsize.serialization import decode_value, encode_value, is_json_native

# -- strategies ---------------------------------------------------------------------

SURROGATES = st.characters(categories=["Cs"])
TEXT = st.text(alphabet=st.one_of(st.characters(exclude_categories=()), SURROGATES), max_size=20)
HUGE_INTS = st.one_of(
    st.integers(min_value=2**9990, max_value=2**10010),  # around the JSON cut-off (10,000 bits)
    st.builds(lambda digits, sign: sign * 10**digits, st.integers(4290, 4400), st.sampled_from([1, -1])),
)
INTS = st.one_of(st.integers(), HUGE_INTS)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 0.0]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, st.binary(max_size=20))
HASHABLE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT, st.binary(max_size=8),
    st.tuples(st.integers(), TEXT), st.frozensets(st.integers(), max_size=3),
)


def _containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(TEXT, children, max_size=4),
        st.dictionaries(HASHABLE, children, max_size=4),
        st.sets(HASHABLE, max_size=4),
        st.frozensets(HASHABLE, max_size=4),
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=12)


def same(a: Any, b: Any) -> bool:
    """Equal in value and type, all the way down; NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, (set, frozenset)):
        rest = list(b)
        for x in a:
            match = next((i for i, y in enumerate(rest) if same(x, y)), None)
            if match is None:
                return False
            rest.pop(match)
        return not rest
    return bool(a == b)


def same_entry(a: DLQEntry, b: DLQEntry) -> bool:
    return all(same(getattr(a, f), getattr(b, f)) for f in a.to_dict())


# Error fields are written into the record as JSON strings, where an escaped high+low
# surrogate pair reads back as one character: that (theoretical) case is out of scope
# for error text. Items and metadata go through the codec, which handles it.
ERROR_TEXT = TEXT.filter(lambda t: re.search("[\ud800-\udbff][\udc00-\udfff]", t) is None)

ENTRIES = st.builds(
    DLQEntry,
    item=VALUES,
    error_type=ERROR_TEXT,
    error_message=ERROR_TEXT,
    timestamp=st.floats(allow_nan=False, allow_infinity=False),
    traceback=st.none() | ERROR_TEXT,
    retry_count=st.integers(min_value=0, max_value=10**6),
    metadata=st.dictionaries(st.text(max_size=8), VALUES, max_size=3),
    entry_id=ERROR_TEXT.filter(bool),
    reason=st.sampled_from(REASONS),
    error_qualname=st.none() | ERROR_TEXT,
)


# -- properties ---------------------------------------------------------------------


@settings(max_examples=150)
@given(VALUES)
def test_the_item_codec_round_trips_any_value_through_json(value):
    codec, payload = encode_value(value)
    assert codec in ("json", "cloudpickle")
    assert (codec == "json") == is_json_native(value)
    stored = json.loads(json.dumps(payload))  # the payload lives inside a JSON record
    assert same(decode_value(codec, stored, allow_pickle=True), value)


@settings(max_examples=60)
@given(VALUES)
def test_forced_pickling_round_trips_too(value):
    codec, payload = encode_value(value, force_pickle=True)
    assert codec == "cloudpickle"
    assert same(decode_value(codec, json.loads(json.dumps(payload)), allow_pickle=True), value)


@settings(max_examples=40)
@given(st.lists(ENTRIES, max_size=4, unique_by=lambda e: e.entry_id), st.sampled_from(list(DLQFormat)))
def test_entries_survive_a_queue_written_and_reopened(entries, fmt):
    # Through the real journal, in the queue's own format: nothing shared by reference.
    with tempfile.TemporaryDirectory() as directory:
        policy = DLQPolicy(directory=directory, format=fmt, max_entries=0, allow_pickle=True)
        with DeadLetterQueue(policy) as queue:
            assert queue.extend(entries) == len(entries)
        reopened = DeadLetterQueue(policy).get_entries()
    assert len(reopened) == len(entries)
    for read, written in zip(reopened, entries):
        assert read is not written and same_entry(read, written), (read, written)


@settings(max_examples=100)
@given(ENTRIES, st.booleans())
def test_journal_encode_decode_round_trips(entry, pickle_everything):
    line = encode_entry(entry, pickle_everything=pickle_everything)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one record, one line
    line.decode("ascii")  # plain ASCII, whatever the text held
    decoded = decode_record(json.loads(line), allow_pickle=True)
    assert same_entry(decoded, entry)
