"""Regression tests for library bugs found while writing the CLI (move under tests/dlq/ on merge)."""

from __future__ import annotations

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, PickleNotAllowedError, replay_failed_items


def test_replay_refuses_pickled_metadata_before_calling_anything(tmp_path):
    # The item is JSON but the metadata (it holds a tuple) is stored pickled. Without
    # allow_pickle, replay used to call func on every item and then crash with a bare
    # TypeError while copying the metadata: side effects done, nothing committed.
    writer = DeadLetterQueue(DLQPolicy(directory=tmp_path, max_entries=0))
    writer.add(5, ValueError("x"), metadata={"where": (1, 2)})
    writer.close()
    reader = DeadLetterQueue(DLQPolicy(directory=tmp_path, max_entries=0))
    calls = []
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        replay_failed_items(reader, calls.append)
    assert calls == []
    assert len(DeadLetterQueue(DLQPolicy(directory=tmp_path, max_entries=0))) == 1
