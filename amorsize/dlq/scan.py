"""A queue's journal read for counting: light rows instead of entries.

``amorsize dlq summary`` on a 100,000-entry queue counts error fields; it never
needs an item. :func:`scan_queue` reads the journal with the reader a queue's
load uses (:func:`~amorsize.dlq.records.read_records`), so every line is parsed
and checked the same way: a corrupt record before the last line raises
:class:`~amorsize.DLQCorruptError` (strict) or is skipped, logged and counted, a
torn last line is a warning. Of each record it keeps a :class:`Row`, the fields
an entry has minus the item and traceback; only a record whose item or
metadata is not plain JSON goes through ``decode_record``, so what fails to
decode fails as in a load. As in a load, a record whose id appears again (a
dedupe update, a replay that failed again) replaces the earlier one and keeps
its place.

Rows have the attributes the summary, the CLI's filters and ``summary --by`` read
(``signature``, ``function`` included), so those have one definition for entries
and rows, and :meth:`QueueScan.get_summary` equals ``get_summary()`` of the queue
the CLI opens on the same directory (``max_entries=0``, nothing pruned on open).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Tuple

from amorsize._fs import read_nofollow
from amorsize.dlq.journal import Journal
from amorsize.dlq.records import (
    NotConverted,
    _record_problem,  # the one definition of a valid record, shared with every load
    decode_record,
    gc_paused,
    read_records,
)
from amorsize.dlq.signature import entry_signature
from amorsize.dlq.summary import summarize
from amorsize.errors import DLQCorruptError, DLQStorageError
from amorsize.serialization import CODEC_JSON, PickledPayload

logger = logging.getLogger("amorsize.dlq")
# The C scanner behind json.loads, run on the whole file's text at each line's start.
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class Row(NamedTuple):
    """One entry as a summary sees it: no item, no traceback."""

    entry_id: str
    error_type: str
    error_message: str
    timestamp: float
    retry_count: int
    metadata: Dict[str, Any]
    reason: str
    error_qualname: str | None
    #: The item is stored pickled and was not loaded (a ``PickledPayload`` in the entry).
    pickled: bool

    @property
    def signature(self) -> str:
        """As :attr:`DLQEntry.signature <amorsize.DLQEntry.signature>`."""
        return entry_signature(self)

    @property
    def function(self) -> str | None:
        """As :attr:`DLQEntry.function <amorsize.DLQEntry.function>`."""
        name = self.metadata.get("function") if isinstance(self.metadata, dict) else None
        return name if isinstance(name, str) else None


def row_of(record: Dict[str, Any]) -> Row:
    """The :class:`Row` of a checked record (see :func:`~amorsize.dlq.records.read_line`).

    Raises:
        Exception: what ``decode_record`` raises on it (only asked for non-JSON codecs).
    """
    if record["item_codec"] == CODEC_JSON and record.get("metadata_codec", CODEC_JSON) == CODEC_JSON:
        metadata, pickled = record.get("metadata") or {}, False
    else:  # pickled or repr payloads: decoded as a load decodes them (without pickle)
        entry = decode_record(record, allow_pickle=False)
        metadata, pickled = entry.metadata, isinstance(entry.item, PickledPayload)
    return _new_row(Row, (
        record["entry_id"], record["error_type"], record["error_message"],
        float(record["timestamp"]), record.get("retry_count", 0), metadata,
        record.get("reason", "exception"), record.get("error_qualname"), pickled))


# NamedTuple's own __new__ is Python code: building the tuple directly halves the cost.
_new_row = tuple.__new__


def read_rows(path: str, *, strict: bool) -> Tuple[List[Row], int]:
    """``(rows in queue order, records skipped as unreadable)`` of the journal at ``path``.

    A journal whose every line is a valid record is read in one pass over its text
    (:func:`_plain_rows`); any other goes through ``read_records``, which reports
    each unusual line exactly as a queue's load does.

    Raises:
        DLQFileNotFoundError: no file at ``path``.
        DLQCorruptError: an unreadable record before the last line, and ``strict``.
    """
    try:
        rows = _plain_rows(read_nofollow(path, "DLQ file", DLQStorageError))
    except FileNotFoundError:
        rows = None  # read_records raises the queue's error
    if rows is not None:
        return list(rows.values()), 0
    return _checked_rows(path, strict=strict)


def _plain_rows(data: bytes) -> Dict[str, Row] | None:
    """The rows of a journal in which nothing is unusual, else None.

    Unusual: text that is not UTF-8, a blank line or one with padding, a line that
    is not exactly one valid record (corrupt or torn), a record that does not
    decode. Each line is parsed from the file's text in place (no line copies, no
    per-line decoding) and checked by the loader's own check.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rows: Dict[str, Row] = {}
    start, size = 0, len(text)
    with gc_paused():
        while start < size:
            end = text.find("\n", start)
            end = size if end < 0 else end
            try:
                record, stop = _scan_once(text, start)
                if stop != end or type(record) is not dict or _record_problem(record):
                    return None
                row = row_of(record)
            except Exception:  # not JSON, nested too deep, does not decode: read_records says
                return None
            rows[row.entry_id] = row  # a later record of an id replaces it in place
            start = end + 1
    return rows


def _checked_rows(path: str, *, strict: bool) -> Tuple[List[Row], int]:
    result = read_records(path, strict=strict, convert=row_of)
    rows: Dict[str, Row] = {}
    skipped = result.corrupt_skipped
    for number, row in zip(result.numbers, result.records):
        if isinstance(row, NotConverted):  # the same message as a queue's load
            exc = row.error
            detail = f"the record cannot be decoded ({type(exc).__name__}: {exc})"
            if strict:
                raise DLQCorruptError(path, number, detail) from exc
            skipped += 1
            logger.warning("DLQ file %r: skipped record at line %d: %s", path, number, detail)
            continue
        rows[row.entry_id] = row
    return list(rows.values()), skipped


@dataclass
class QueueScan:
    """What :func:`scan_queue` found in a queue's directory."""

    directory: str
    rows: List[Row]
    corrupt_skipped: int
    archived_bytes: int

    def get_summary(self) -> Dict[str, Any]:
        """As ``DeadLetterQueue.get_summary()`` of a queue opened read-only on the directory."""
        summary = summarize(self.rows, pruned=0, persist_errors=0,
                            corrupt_skipped=self.corrupt_skipped)
        summary.update(unpersisted=0, healthy=True, archived_bytes=self.archived_bytes)
        return summary


def scan_queue(directory: str, *, strict: bool = True) -> QueueScan:
    """Read the queue in ``directory`` as rows; changes nothing but a killed compaction's
    leftovers (as opening a queue does).

    Raises:
        DLQStorageError: the directory is unusable, or a file of the queue is a symlink.
        DLQCorruptError: as :func:`read_rows`.
    """
    journal = Journal(directory, fsync="never", strict=strict)
    journal.prepare()
    rows: List[Row] = []
    skipped = 0
    if os.path.exists(journal.path):
        rows, skipped = read_rows(journal.path, strict=strict)
    return QueueScan(directory, rows, skipped, journal.archive_size())
