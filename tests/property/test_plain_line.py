"""The quick journal line of a worker's failure is the general encoder's line, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amorsize.dlq import _plainline, records
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.failure import failure_entry

TEXT = st.text(max_size=12)
ASCII = st.text(alphabet=st.characters(max_codepoint=127), max_size=12)
INTS = st.one_of(st.integers(-(2**70), 2**70), st.integers(-5, 5))
FLAT = st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXT, ASCII)
METADATA = st.one_of(
    st.dictionaries(st.one_of(ASCII, TEXT), st.one_of(FLAT, st.lists(INTS, max_size=2)), max_size=4),
    st.fixed_dictionaries({"attempts": INTS, "pid": INTS, "host": TEXT, "function": ASCII}),
)
ITEMS = st.one_of(INTS, TEXT, ASCII, st.booleans(), st.none(), st.floats(), st.lists(INTS, max_size=2))


def general(entry: DLQEntry, monkeypatch: Any) -> bytes:
    with monkeypatch.context() as patch:
        patch.setattr(records, "plain_line", lambda entry, version: None)
        return records.encode_entry(entry, pickle_everything=False)


@settings(max_examples=300, deadline=None)
@given(
    item=ITEMS, metadata=METADATA, error_type=TEXT, message=TEXT, qualname=st.one_of(st.none(), TEXT),
    traceback=st.one_of(st.none(), TEXT), timestamp=st.one_of(st.floats(), st.integers(0, 2**40)),
    retry_count=st.one_of(INTS, st.booleans()), reason=st.sampled_from(REASONS),
)
def test_the_quick_line_is_the_general_line(
    item: Any, metadata: Any, error_type: str, message: str, qualname: Any, traceback: Any,
    timestamp: Any, retry_count: Any, reason: str,
) -> None:
    entry = DLQEntry(item, error_type, message, timestamp, traceback, retry_count, metadata,
                     reason=reason, error_qualname=qualname)
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = general(entry, monkeypatch)
    assert records.encode_entry(entry, pickle_everything=False) == expected
    # A second time: the metadata's text now comes from the cache (1 == True must not mix).
    assert records.encode_entry(entry, pickle_everything=False) == expected


def test_a_workers_failure_takes_the_quick_path_and_odd_values_do_not() -> None:
    try:
        raise ValueError("bad 'x'")
    except ValueError as exc:
        entry = failure_entry(7, exc, attempts=2, function="mod.f")
    assert _plainline.plain_line(entry, records.RECORD_VERSION) is not None
    for odd in (
        {"item": 2**64}, {"item": "é"}, {"item": [1]}, {"metadata": {"a": [1]}}, {"metadata": {"a": 1.5}},
        {"timestamp": float("nan")}, {"error_message": 3},
    ):
        changed = DLQEntry(**{**entry.__dict__, **odd})
        assert _plainline.plain_line(changed, records.RECORD_VERSION) is None, odd
    flags = [DLQEntry(**{**entry.__dict__, "metadata": {"flag": value}}) for value in (1, True)]
    assert _plainline.plain_line(flags[0], records.RECORD_VERSION) is not None
    assert _plainline.plain_line(flags[1], records.RECORD_VERSION) is None  # a bool is not an int
