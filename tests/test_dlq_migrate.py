"""Seed compatibility: seed-era dlq.json / dlq.pkl migrate once; the seed's validation wording."""

from __future__ import annotations

import json
import logging
import pickle

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, InvalidArgumentError
from tests.test_cli import run_main

SEED = [
    {"item": {"id": 1}, "error_type": "ValueError", "error_message": "bad 1",
     "timestamp": 1700000000.5, "traceback": "Traceback ...", "retry_count": 2,
     "metadata": {"source": "seed"}},
    {"item": "row-2", "error_type": "KeyError", "error_message": "'x'", "timestamp": 1700000001.0,
     "traceback": None, "retry_count": 0, "metadata": {}},
]


def seed_dir(tmp_path, name="dlq.json"):
    directory = tmp_path / "q"
    directory.mkdir()
    if name.endswith(".json"):
        (directory / name).write_text(json.dumps(SEED))
    else:
        (directory / name).write_bytes(pickle.dumps(SEED))
    return directory


def summary_of(entries):
    return [(e.item, e.error_type, e.error_message, e.timestamp, e.retry_count, e.metadata)
            for e in entries]


def test_opening_migrates_a_seed_json_once(tmp_path, caplog):
    d = seed_dir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        q = DeadLetterQueue(DLQPolicy(directory=d))
    assert summary_of(q.get_entries()) == [
        (s["item"], s["error_type"], s["error_message"], s["timestamp"], s["retry_count"],
         s["metadata"]) for s in SEED]
    assert not (d / "dlq.json").exists() and json.loads((d / "dlq.json.migrated").read_text()) == SEED
    assert "migrated 2 entries from the seed-era dlq.json" in caplog.text
    q.close()
    assert len(DeadLetterQueue(DLQPolicy(directory=d))) == 2  # once: nothing new the second time


def test_a_cut_short_migration_does_not_duplicate(tmp_path):
    d = seed_dir(tmp_path)
    DeadLetterQueue(DLQPolicy(directory=d)).close()
    # As if the rename had not happened after the append: the old file is still there.
    (d / "dlq.json").write_text((d / "dlq.json.migrated").read_text())
    assert len(DeadLetterQueue(DLQPolicy(directory=d))) == 2
    assert (d / "dlq.json.migrated.migrated").exists()


def test_a_seed_pickle_needs_allow_pickle(tmp_path, caplog):
    d = seed_dir(tmp_path, "dlq.pkl")
    with caplog.at_level(logging.WARNING, logger="amorsize.dlq"):
        assert len(DeadLetterQueue(DLQPolicy(directory=d))) == 0
    assert (d / "dlq.pkl").exists() and "pickle is not allowed" in caplog.text
    q = DeadLetterQueue(DLQPolicy(directory=d, allow_pickle=True))
    assert [e.item for e in q.get_entries()] == [{"id": 1}, "row-2"]
    assert (d / "dlq.pkl.migrated").exists()


def test_cli_migrate_dry_run_then_for_real(tmp_path, capsys):
    d = seed_dir(tmp_path)
    code, out, err = run_main(capsys, "dlq", "summary", d)
    assert code == 0 and "seed-era dlq.json" in err and (d / "dlq.json").exists()
    code, out, _ = run_main(capsys, "dlq", "migrate", d, "--dry-run")
    assert code == 0 and "would migrate 2 entries from dlq.json" in out
    assert (d / "dlq.json").exists()
    code, out, _ = run_main(capsys, "dlq", "migrate", d)
    assert code == 0 and "kept as dlq.json.migrated" in out
    code, out, _ = run_main(capsys, "dlq", "list", d, "--json")
    assert len(out.splitlines()) == 2


@pytest.mark.parametrize("kw, phrase", [
    ({"max_entries": -1}, "max_entries must be a non-negative integer: got -1"),
    ({"directory": ""}, "directory must be a non-empty string"),
    ({"format": "xml"}, "format must be a DLQFormat enum value"),
    ({"include_traceback": "yes"}, "include_traceback must be a boolean"),
    ({"auto_persist": 1}, "auto_persist must be a boolean"),
])
def test_validation_keeps_the_seed_wording(kw, phrase):
    name = next(iter(kw))
    with pytest.raises(InvalidArgumentError) as info:
        DLQPolicy(**kw)
    message = str(info.value)
    assert phrase in message and message.startswith(f"{name}=")  # today's form, then the seed's
