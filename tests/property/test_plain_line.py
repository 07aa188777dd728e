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


class _Custom(Exception):
    """An exception class outside builtins: its qualified name carries the module."""


def _raised(kind: type, message: str) -> BaseException:
    try:
        raise kind(message)
    except BaseException as exc:  # any kind: the point of the test
        return exc


@settings(max_examples=200, deadline=None)
@given(
    item=ITEMS, message=TEXT, kind=st.sampled_from([ValueError, KeyError, _Custom, SystemExit]),
    attempts=st.integers(1, 4), include_traceback=st.booleans(), raised=st.booleans(),
    function=st.one_of(ASCII, TEXT),
)
def test_a_hooks_quick_line_is_the_line_of_its_failure_entry(
    item: Any, message: str, kind: type, attempts: int, include_traceback: bool, raised: bool,
    function: str,
) -> None:
    """A capture hook writes failure_line's bytes without building the entry: they must be
    the bytes encode_entry(failure_entry(...)) writes, but for the entry id and the time."""
    from amorsize.failure import worker_metadata

    error = _raised(kind, message) if raised else kind(message)
    meta = _plainline.meta_text(worker_metadata(attempts, function))
    quick = _plainline.failure_line(item, error, attempts - 1, meta, include_traceback,
                                    records.RECORD_VERSION) if meta else None
    entry = failure_entry(item, error, attempts=attempts, function=function,
                          include_traceback=include_traceback)
    if quick is None:  # not an item or metadata the quick path writes: the general path does
        assert meta is None or _plainline.plain_line(entry, records.RECORD_VERSION) is None
        return
    line, entry_id, error_type, text = quick
    assert (error_type, text) == (entry.error_type, entry.error_message)
    expected = records.encode_entry(entry, pickle_everything=False)
    stamp = records.parse_line(line)["timestamp"]  # type: ignore[index]
    same_time = DLQEntry(**{**entry.__dict__, "entry_id": entry_id, "timestamp": stamp})
    assert line == records.encode_entry(same_time, pickle_everything=False)
    assert records.parse_line(expected) is not None


JSON_ITEMS = st.recursive(
    FLAT, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(item=JSON_ITEMS, message=TEXT, traceback=st.one_of(st.none(), TEXT), cut=st.integers(1, 10**6),
       key=st.sampled_from(records._ENCODED_KEYS))
def test_looks_encoded_takes_every_encoded_line_and_no_prefix_or_keyless_line(
    item: Any, message: str, traceback: Any, cut: int, key: bytes,
) -> None:
    # An item may hold the journal's own keys (a dict with "reason", "traceback"...): the
    # ordered scan must still find the real ones, and never take a line that lacks one.
    entry = DLQEntry(item, "ValueError", message, 1.5, traceback, 0, {"attempts": 1})
    line = records.encode_entry(entry, pickle_everything=False)
    assert records.looks_encoded(line)
    assert not records.looks_encoded(line[: cut % len(line)])  # a torn line
    keyless = line.replace(key, b',"x' + key[2:], 1)  # the first occurrence: the record's own key
    if key not in keyless:
        assert not records.looks_encoded(keyless)


@settings(max_examples=500, deadline=None)
@given(now_ns=st.one_of(st.integers(0, 2**32 * 10**9), st.integers(0, 2**64), st.just(2**32 * 10**9 - 1)))
def test_the_quick_lines_time_is_the_text_repr_gives_its_float(now_ns: int) -> None:
    # The general encoder writes repr(entry.timestamp): a line read back and written again
    # must not change, and the time must stay within a microsecond of the clock.
    text = _plainline._seconds_text(now_ns)
    assert float.__repr__(float(text)) == text
    assert abs(float(text) - now_ns / 1e9) <= 1e-6 + now_ns / 1e9 * 2**-52


def test_only_frames_are_kept_quoted_not_messages() -> None:
    # Messages differ per item and may be large: keeping their escapes would hold up to
    # thousands of them in every worker. Frames recur, and are what is worth keeping.
    _plainline._escaped.clear()
    for i in range(50):
        try:
            raise ValueError(f"record {i}: " + "x" * 10_000)
        except ValueError as exc:
            built = _plainline.failure_line(i, exc, 0, '{"attempts":1}', True, records.RECORD_VERSION)
            assert built is not None and records.parse_line(built[0]) is not None
    assert _plainline._escaped, "frames are kept"
    assert all(part.startswith(_plainline._RECURRING_PARTS) for part in _plainline._escaped)
