"""Seed compatibility: move a seed-era ``dlq.json`` / ``dlq.pkl`` into the journal, once.

The seed library kept a queue as one file: ``dlq.json`` (a JSON array of entry
dicts) or ``dlq.pkl`` (a pickled list of entries). Opening a directory that holds
one (or ``amorsize dlq migrate DIR``) appends its entries to ``dlq.jsonl`` and
renames the old file to ``<name>.migrated``, so it is done once and nothing is
lost; a log line (WARNING) says what was done. ``dlq.pkl`` is only read with
``allow_pickle=True`` (unpickling runs code); without it the file is left alone
and a WARNING says how to migrate it.

Each migrated entry gets an id made from its timestamp and its position in the
old file, so a migration cut short (after the append, before the rename) and run
again rewrites the same ids instead of duplicating entries.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List

from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.journal import Journal
from amorsize.dlq.records import encode_entry

logger = logging.getLogger("amorsize.dlq")

SEED_FILES = ("dlq.json", "dlq.pkl")
MIGRATED_SUFFIX = ".migrated"
#: The per-process token part of a migrated entry's id (ids end in 8 hex digits).
SEED_ID_TOKEN = "5eed0001"


@dataclass
class Migration:
    """What a migration found (and, unless a dry run, did)."""

    directory: str
    migrated: Dict[str, int] = field(default_factory=dict)  # seed file -> entries moved
    skipped: Dict[str, str] = field(default_factory=dict)  # seed file -> why it was left
    renamed: Dict[str, str] = field(default_factory=dict)  # seed file -> its new name


class _SeedObject:
    """Stands in for a seed-era class that no longer exists; keeps its attributes."""


class _SeedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if module.split(".")[0] == "amorsize":
                return _SeedObject
            raise


def _as_dict(record: Any) -> Dict[str, Any]:
    if isinstance(record, DLQEntry):
        return record.to_dict()
    data = record if isinstance(record, dict) else getattr(record, "__dict__", None)
    if not isinstance(data, dict) or "error_type" not in data:
        raise ValueError(f"not a DLQ entry: {type(record).__name__}")
    return dict(data)


def read_seed_file(path: str) -> List[DLQEntry]:
    """The entries of a seed-era file (``.pkl`` is unpickled: only call it on trusted files)."""
    if path.endswith(".pkl"):
        with open(path, "rb") as handle:
            records = _SeedUnpickler(handle).load()
    else:
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
    if isinstance(records, dict) and isinstance(records.get("entries"), list):
        records = records["entries"]
    if not isinstance(records, list):
        raise ValueError("expected a list of entries")
    entries = []
    for index, record in enumerate(records):
        data = _as_dict(record)
        stamp = data.get("timestamp")
        stamp = float(stamp) if isinstance(stamp, (int, float)) else 0.0
        data["entry_id"] = format((int(stamp * 1e9) << 32) | (index & 0xFFFFFFFF), "024x") + SEED_ID_TOKEN
        data["timestamp"] = stamp
        entries.append(DLQEntry.from_dict(data))
    return entries


def _migrate_file(path: str, journal: Journal, report: Migration, *, pickle_everything: bool,
                  dry_run: bool) -> None:
    name = os.path.basename(path)
    try:
        entries = read_seed_file(path)
    except Exception as exc:  # a broken old file is reported and left as it is
        report.skipped[name] = f"cannot be read ({type(exc).__name__}: {exc})"
        return
    report.migrated[name] = len(entries)
    if dry_run:
        return
    if entries:
        journal.append([encode_entry(e, pickle_everything=pickle_everything) for e in entries])
        journal.sync()
    target = path + MIGRATED_SUFFIX
    while os.path.exists(target):
        target += MIGRATED_SUFFIX
    os.replace(path, target)
    report.renamed[name] = os.path.basename(target)


def migrate_seed_files(directory: str, *, allow_pickle: bool, pickle_everything: bool = False,
                       dry_run: bool = False, fsync: str = "always") -> Migration:
    """Move the seed-era files of ``directory`` into its journal (see the module doc).

    Raises:
        OSError: the journal could not be written or the old file renamed (the old
            file is then still there, and the next attempt rewrites the same ids).
    """
    report = Migration(directory)
    present = [n for n in SEED_FILES if os.path.isfile(os.path.join(directory, n))]
    if not present:
        return report
    journal = Journal(directory, fsync=fsync)
    try:
        for name in present:
            if name.endswith(".pkl") and not allow_pickle:
                report.skipped[name] = "pickle is not allowed (allow_pickle=True / --allow-pickle)"
                continue
            _migrate_file(os.path.join(directory, name), journal, report,
                          pickle_everything=pickle_everything, dry_run=dry_run)
    finally:
        journal.close()
    if not dry_run:
        _log(report)
    return report


def _log(report: Migration) -> None:
    for name, count in report.migrated.items():
        logger.warning("DLQ %r: migrated %d entries from the seed-era %s into dlq.jsonl; the old "
                       "file is kept as %s", report.directory, count, name, report.renamed.get(name))
    for name, why in report.skipped.items():
        logger.warning("DLQ %r: the seed-era %s was not migrated: %s", report.directory, name, why)


def migrate_on_open(directory: str, *, allow_pickle: bool, pickle_everything: bool,
                    fsync: str) -> None:
    """What opening a queue does: migrate if there is anything to; an I/O error is logged."""
    if not os.path.isdir(directory):
        return
    try:
        migrate_seed_files(directory, allow_pickle=allow_pickle,
                           pickle_everything=pickle_everything, fsync=fsync)
    except OSError as exc:
        logger.warning("DLQ %r: migrating the seed-era files failed (%s: %s); they are left "
                       "as they are", directory, type(exc).__name__, exc)
