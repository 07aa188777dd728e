"""Dedupe (one entry per item, attempts summed) and retention by age (max_age_seconds)."""

from __future__ import annotations

import logging
import time
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amorsize import (
    DeadLetterQueue,
    DLQEntry,
    DLQPolicy,
    InvalidArgumentError,
    replay_failed_items,
)
from amorsize.dlq.dedupe import ERROR_HISTORY, default_key


def lines(directory: Path) -> int:
    return len((directory / "dlq.jsonl").read_text().splitlines())


def test_a_repeated_item_updates_its_entry(tmp_path):
    q = DeadLetterQueue(DLQPolicy(directory=tmp_path, dedupe=True))
    first = q.add({"id": 1}, ValueError("bad 1"), retry_count=2)
    q.add({"id": 2}, ValueError("other"))
    q.add({"id": 1}, KeyError("missing"), retry_count=0)
    q.add({"id": 1}, ValueError("bad 1"))
    assert len(q) == 2
    entry = q.get_entries()[0]
    assert entry.entry_id == first.entry_id and entry.timestamp == first.timestamp
    assert entry.metadata["attempts"] == 3 + 1 + 1 and entry.retry_count == 4
    assert entry.metadata["failures"] == 3
    assert entry.metadata["first_failure_at"] == first.timestamp
    assert entry.metadata["last_failure_at"] >= first.timestamp
    assert entry.error_type == "ValueError"  # the last error
    assert entry.metadata["error_history"] == ["KeyError: 'missing'", "ValueError: bad 1"]
    # Append-only: one line per failure; reopening gives the merged entry back.
    assert lines(tmp_path) == 4
    again = DeadLetterQueue(DLQPolicy(directory=tmp_path, dedupe=True))
    assert again.get_entries() == q.get_entries()
    again.add({"id": 1}, ValueError("bad 1"))
    assert len(again) == 2 and again.get_entries()[0].metadata["failures"] == 4


def test_history_is_short_and_distinct():
    q = DeadLetterQueue(DLQPolicy(auto_persist=False, dedupe=True, max_entries=0))
    for i in range(ERROR_HISTORY + 3):
        q.add("x", ValueError(f"e{i % (ERROR_HISTORY + 2)}"))
    history = q.get_entries()[0].metadata["error_history"]
    assert len(history) == ERROR_HISTORY and len(set(history)) == ERROR_HISTORY
    assert history[-1] == f"ValueError: e{(ERROR_HISTORY + 2) % (ERROR_HISTORY + 2)}"


def test_a_custom_key_and_key_without_dedupe():
    q = DeadLetterQueue(DLQPolicy(auto_persist=False, dedupe=True), key=lambda item: item["id"])
    q.add({"id": 1, "try": 1}, ValueError("a"))
    q.add({"id": 1, "try": 2}, ValueError("a"))
    assert len(q) == 1
    with pytest.raises(InvalidArgumentError, match="key"):
        DeadLetterQueue(DLQPolicy(auto_persist=False), key=lambda item: item)


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=5))
def test_default_key_ignores_dict_order(data):
    assert default_key(data) == default_key(dict(reversed(list(data.items()))))


def test_a_replay_that_fails_again_updates_the_same_way():
    q = DeadLetterQueue(DLQPolicy(auto_persist=False, dedupe=True))
    q.add(1, ValueError("first"))

    def still_bad(item):
        raise KeyError("again")

    _, still = replay_failed_items(q, still_bad, function=None)
    entry = q.get_entries()[0]
    assert still == [entry]
    assert len(q) == 1 and entry.metadata["failures"] == 2 and entry.metadata["attempts"] == 2
    assert entry.metadata["error_history"] == ["ValueError: first", "KeyError: 'again'"]


def old_entry(item, age: float) -> DLQEntry:
    return DLQEntry(item, "ValueError", "old", time.time() - age)


def test_max_age_prunes_on_open_and_on_add_with_a_warning(tmp_path, caplog):
    setup = DeadLetterQueue(DLQPolicy(directory=tmp_path))
    setup.extend([old_entry(1, 3600), old_entry(2, 10), old_entry(3, 7200)])
    setup.close()
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        q = DeadLetterQueue(DLQPolicy(directory=tmp_path, max_age_seconds=60))
    assert [e.item for e in q.get_entries()] == [2]
    assert "dropped 2 entries whose first failure is older than max_age_seconds=60" in caplog.text
    assert q.get_summary()["pruned"] == 2
    q.extend([old_entry(4, 0)])
    assert [e.item for e in q.get_entries()] == [2, 4]


def test_max_age_prunes_the_oldest_end_on_add(monkeypatch):
    now = [time.time()]
    monkeypatch.setattr("amorsize.dlq.pruning.time", types.SimpleNamespace(time=lambda: now[0]))
    q = DeadLetterQueue(DLQPolicy(auto_persist=False, max_age_seconds=60))
    q.extend([DLQEntry(i, "E", "m", now[0] + i * 10) for i in range(5)])
    now[0] += 85  # items 0, 1 and 2 (at +0, +10, +20) are now older than 60 s
    q.add(9, ValueError("new"))
    assert [e.item for e in q.get_entries()] == [3, 4, 9]


def test_max_age_counts_from_the_first_failure_of_a_deduplicated_entry():
    q = DeadLetterQueue(DLQPolicy(auto_persist=False, dedupe=True, max_age_seconds=60))
    e = old_entry("x", 30)
    q.add_entry(e)
    entry = q.get_entries()[0]
    entry.metadata["first_failure_at"] = time.time() - 120  # first failed long ago
    q.add("y", ValueError("new"))
    assert [x.item for x in q.get_entries()] == ["y"]


@pytest.mark.parametrize("bad", [0, -1, "7d", float("inf")])
def test_max_age_must_be_positive_seconds(bad):
    with pytest.raises(InvalidArgumentError, match="max_age_seconds"):
        DLQPolicy(max_age_seconds=bad)
