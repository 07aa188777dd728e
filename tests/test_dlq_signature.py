"""Failure signatures, the summary's signature and function counts, replay by function."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amorsize import DeadLetterQueue, DLQEntry, DLQPolicy, InvalidTypeError, replay_failed_items
from amorsize.dlq.signature import normalize_message, signature_of
from amorsize.dlq.summary import TOP_SIGNATURES
from amorsize.failure import function_name
from amorsize.replay import function_matches


def memory_queue() -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))


def entry(message: str, error_type: str = "ValueError", function: str | None = None,
          item: object = 0) -> DLQEntry:
    metadata = {"function": function} if function else {}
    return DLQEntry(item, error_type, message, 1.0, metadata=metadata)


@pytest.mark.parametrize("left, right", [
    ("record 7 is malformed", "record 9 is malformed"),
    ("bad value 'abc' in column \"x\"", "bad value 'zz' in column \"yy\""),
    ("cannot open /var/data/a.csv", "cannot open /tmp/other/b.json"),
    ("object at 0x7f3a12 gone", "object at 0xdeadbeef gone"),
    ("job 123e4567-e89b-12d3-a456-426614174000 lost", "job 00000000-0000-0000-0000-000000000001 lost"),
    ("digest deadbeef42 wrong", "digest 0123abcd99 wrong"),
    ("took 1.5 s", "took -3e9 s"),
])
def test_variable_parts_group_together(left, right):
    assert signature_of("ValueError", left) == signature_of("ValueError", right)


@pytest.mark.parametrize("left, right", [
    ("record 7 is malformed", "record 7 is missing"),
    ("can't parse", "cannot parse"),
])
def test_different_messages_stay_apart(left, right):
    assert signature_of("ValueError", left) != signature_of("ValueError", right)


def test_signature_names_the_type_and_placeholders():
    assert signature_of("KeyError", "record 7 at /a/b") == "KeyError: record <num> at <path>"
    assert signature_of("KeyError", "") == "KeyError"
    assert signature_of("ValueError", "x") != signature_of("TypeError", "x")
    assert normalize_message("first 1\nsecond line 2") == "first <num>"  # only the first line
    assert "don't" in normalize_message("don't 'stop'")  # an apostrophe is not a quote


@given(st.text(alphabet="abc ", max_size=20), st.integers(), st.integers())
def test_any_number_gives_the_same_signature(prefix, a, b):
    assert signature_of("E", f"{prefix} {a} end") == signature_of("E", f"{prefix} {b} end")


@given(st.text(max_size=300))
def test_signature_is_bounded_and_stable(message):
    first = signature_of("E", message)
    assert first == signature_of("E", message)
    assert len(first) <= len("E: ") + 200 and "\n" not in first


#: Text rich in what the rules look at: digits (0 apart), hex letters, x, quotes, paths, dashes.
_RULE_TEXT = st.text(alphabet="0123456789abcdefxX.-+eE/\\:~'\" \n_Cq٣", max_size=60)


@given(_RULE_TEXT)
def test_digits_one_to_nine_are_interchangeable_so_the_cache_key_is_exact(message):
    # signature_of caches by the message with 2-9 written as 1: only sound if the
    # normalization (uncached) cannot tell them apart.
    same = message.translate(str.maketrans("23456789", "11111111"))
    assert normalize_message(same) == normalize_message(message)
    normalized = normalize_message(message)
    assert signature_of("E", message) == (f"E: {normalized}" if normalized else "E")


def test_a_lone_surrogate_in_a_message_keeps_its_signature():
    # JSON can carry one ("\\ud800"); the cache key is the message's UTF-8 bytes.
    assert signature_of("E", "bad \ud800 row 7") == "E: bad \ud800 row <num>"


def test_entry_signature_uses_the_qualified_type():
    e = DLQEntry(0, "ParseError", "row 3", 1.0, error_qualname="mypkg.ParseError")
    assert e.signature == "mypkg.ParseError: row <num>"


def test_summary_counts_signatures_with_an_example_and_functions():
    q = memory_queue()
    for i in range(5):
        q.add_entry(entry(f"record {i} is malformed", function="m.parse"))
    q.add_entry(entry("disk full", "OSError", function="m.save"))
    q.add_entry(entry("no function recorded"))
    summary = q.get_summary()
    top = summary["signatures"]
    assert top[0]["signature"] == "ValueError: record <num> is malformed"
    assert top[0]["count"] == 5
    assert top[0]["example"]["error_message"] == "record 0 is malformed"
    assert [s["count"] for s in top] == [5, 1, 1]
    assert summary["functions"] == {"m.parse": 5, "m.save": 1, "<unknown>": 1}


def test_summary_lists_at_most_top_n_signatures():
    q = memory_queue()
    for i in range(TOP_SIGNATURES + 3):
        q.add_entry(entry(f"kind{'x' * i} failed"))
    assert len(q.get_summary()["signatures"]) == TOP_SIGNATURES


def test_filter_by_signature():
    q = memory_queue()
    a, b = entry("record 1 bad"), entry("record 2 bad")
    q.extend([a, entry("other"), b])
    assert [e.entry_id for e in q.filter(signature=a.signature)] == [a.entry_id, b.entry_id]
    with pytest.raises(InvalidTypeError):
        q.filter(signature=3)  # type: ignore[arg-type]


def parse(item):
    return item * 2


def f(item):
    raise AssertionError("must not be replayed")


def test_replay_takes_only_the_entries_of_the_same_function(caplog):
    q = memory_queue()
    mine = [entry("m", function=function_name(parse), item=i) for i in range(3)]
    others = [entry("m", function="__main__.f", item=i) for i in range(4)]
    unknown = entry("m", item=10)  # no function recorded: replayed
    q.extend(mine + others + [unknown])
    with caplog.at_level(logging.WARNING, logger="amorsize.replay"):
        results, still = replay_failed_items(q, parse)
    assert results == [0, 2, 4, 20] and still == []
    assert [e.entry_id for e in q.get_entries()] == [e.entry_id for e in others]
    assert "4 entries recorded for other functions (__main__.f: 4)" in caplog.text


def test_replay_with_function_none_takes_everything():
    q = memory_queue()
    q.extend([entry("m", function="other.g", item=1), entry("m", function=function_name(parse), item=2)])
    results, _still = replay_failed_items(q, parse, function=None)
    assert results == [2, 4] and len(q) == 0


def test_replay_with_a_named_function_and_a_signature():
    q = memory_queue()
    a = entry("record 1 bad", function="x.g", item=1)
    b = entry("record 2 bad", function="x.g", item=2)
    c = entry("other", function="x.g", item=3)
    q.extend([a, b, c, entry("record 3 bad", function="y.h", item=4)])
    results, _ = replay_failed_items(q, parse, function="x.g", signature=a.signature)
    assert results == [2, 4]
    assert {e.entry_id for e in q.get_entries()} == {c.entry_id, q.get_entries()[-1].entry_id}
    assert len(q) == 2


def test_a_script_function_matches_its_module_name():
    assert function_matches("__main__.parse", "job.parse", "parse")
    assert not function_matches("__main__.f", "job.parse", "parse")
    assert function_matches(None, "job.parse", "parse")
    assert not function_matches("other.parse", "job.parse", "parse")
