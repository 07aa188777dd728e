"""``amorsize dlq list --newest --limit N`` without decoding the whole journal.

The table needs every id (for the id column's width and the total) but only the
N newest entries. Ids are read from the start of each line (the fast path of
:func:`~amorsize.dlq.records.record_id`); only the lines of the entries shown,
lines whose id cannot be read that way, and the last line (a torn tail) are
parsed, checked and decoded like a full load does. As in the queue, a record
whose id appears again replaces the earlier one and keeps its place.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Tuple

from amorsize._fs import read_nofollow
from amorsize.cli.common import open_queue, require_directory
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.journal import JOURNAL_FILE_NAME, Journal
from amorsize.dlq.records import decode_record, read_line, record_id

#: Filters and options that need every entry decoded: with any, the full load is used.
_NEEDS_ALL = ("error_type", "reason", "signature", "function", "host", "since", "until", "grep",
              "page", "allow_pickle", "archived")


def applies(args: argparse.Namespace) -> bool:
    """Whether ``args`` is a plain ``list --newest --limit N`` this module answers."""
    return bool(getattr(args, "newest", False) and getattr(args, "limit", None)) and not any(
        getattr(args, name, None) for name in _NEEDS_ALL)


def newest(args: argparse.Namespace) -> Tuple[List[DLQEntry], List[str]]:
    """``(the --offset/--limit newest entries, every id oldest first)``.

    Anything unusual (no journal, a line that does not parse, a symlink) goes to the
    full load, which reports it (exit 3 with file and line) or skips it as always.
    """
    require_directory(args.dir)
    path = os.path.join(args.dir, JOURNAL_FILE_NAME)
    try:
        Journal(args.dir, fsync="never", strict=args.strict).prepare()
        lines, where = _index(path)
    except Exception:
        return _from_queue(args)
    ids = list(where)
    start = max(0, args.offset)
    entries = []
    for entry_id in ids[::-1][start:start + args.limit]:
        record, _ = read_line(lines[where[entry_id]])
        entry = _decoded(record)
        if entry is None:  # unreadable after all: the full load reports or skips it
            return _from_queue(args)
        entries.append(entry)
    return entries, ids


def _decoded(record: Dict[str, Any] | None) -> DLQEntry | None:
    if record is None:
        return None
    try:
        return decode_record(record, allow_pickle=False)
    except Exception:
        return None


def _index(path: str) -> Tuple[Dict[int, bytes], Dict[str, int]]:
    """``({line number: line}, {id: number of its last line})`` in first-seen id order."""
    raw = read_nofollow(path, "DLQ file").split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines: Dict[int, bytes] = {}
    where: Dict[str, int] = {}
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        entry_id = record_id(line) if number < len(raw) else None
        if entry_id is None:
            record, _ = read_line(line)
            if record is None:
                raise ValueError(f"line {number}")  # corrupt or torn: the full load decides
            entry_id = record["entry_id"]
        lines[number] = line
        where[entry_id] = number
    return lines, where


def _from_queue(args: argparse.Namespace) -> Tuple[List[DLQEntry], List[str]]:
    everything = open_queue(args).get_entries()
    start = max(0, args.offset)
    return everything[::-1][start:start + args.limit], [e.entry_id for e in everything]

