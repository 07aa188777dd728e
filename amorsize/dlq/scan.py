"""A queue's journal read for counting: light rows instead of entries.

``amorsize dlq summary`` on a 100,000-entry queue counts error fields; it never
needs an item. :func:`scan_queue` keeps of each record a :class:`Row`: the
fields of an entry minus the item and traceback. Every line is still parsed and
checked by the loader's own check (``records._record_problem``), so the rows
are exactly the entries a load would give:

* **Plain journals** (every line one valid record, the usual case) are read in
  one pass over the file's text: each line parsed in place by the C scanner, no
  line copies, no item decoded (a record whose item or metadata is not plain
  JSON goes through ``decode_record``). A journal of
  :data:`PARALLEL_MIN_CHARS` or more is parsed in two halves at once, the second
  by a forked child (parsing is most of a summary's time; the CLI has two cores).
* **Anything unusual** (a corrupt, torn, blank or padded line, a record that
  does not decode, text that is not UTF-8) sends the whole file through
  :func:`~amorsize.dlq.records.read_records`, the loader's reader, so it is
  reported exactly as a load reports it: :class:`~amorsize.DLQCorruptError`
  with file and line (strict), or skipped, logged and counted; a torn last line
  is a warning.

As in a load, a record whose id appears again (a dedupe update, a replay that
failed again) replaces the earlier one and keeps its place. Rows have the
attributes the summary, the CLI's filters and ``summary --by`` read, so those
have one definition for entries and rows, and :meth:`QueueScan.get_summary`
equals ``get_summary()`` of the queue the CLI opens on the directory
(``max_entries=0``: nothing pruned on open).
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import signal
import sys
import threading
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
#: Journals of at least this many characters are parsed in two halves at once, the
#: second by a forked child: parsing is most of a summary's time and a big journal
#: costs more than the fork (~10 ms) and moving the child's rows back (~5% of its work).
PARALLEL_MIN_CHARS = 8 * 2**20
# The C scanner behind json.loads, run on the whole file's text at each line's start.
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class Row(NamedTuple):
    """One entry as a summary sees it: its error fields, of its item and metadata only
    what the summary and the CLI's filters read."""

    entry_id: str
    error_type: str
    error_message: str
    timestamp: float
    retry_count: int
    reason: str
    error_qualname: str | None
    #: The item is stored pickled and was not loaded (a ``PickledPayload`` in the entry).
    pickled: bool
    #: As :attr:`DLQEntry.function <amorsize.DLQEntry.function>`.
    function: str | None
    #: ``metadata["host"]`` if it is a string (the worker's host), else None.
    host: str | None

    @property
    def signature(self) -> str:
        """As :attr:`DLQEntry.signature <amorsize.DLQEntry.signature>`."""
        return entry_signature(self)


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
    function, host = (metadata.get("function"), metadata.get("host")) if isinstance(
        metadata, dict) else (None, None)
    qualname = record.get("error_qualname")
    # The few distinct types, reasons, functions and hosts shared by all rows: less
    # memory, hashed once when counted, and marshalled once by the forked half.
    return _new_row(Row, (
        record["entry_id"], _intern(record["error_type"]), record["error_message"],
        float(record["timestamp"]), record.get("retry_count", 0),
        _intern(record.get("reason", "exception")), qualname and _intern(qualname), pickled,
        _intern(function) if isinstance(function, str) else None,
        _intern(host) if isinstance(host, str) else None))


# NamedTuple's own __new__ is Python code: building the tuple directly halves the cost.
_new_row = tuple.__new__
_intern = sys.intern


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
        rows = _plain_rows(path)
    except FileNotFoundError:
        rows = None  # read_records raises the queue's error
    if rows is not None:
        return list(rows.values()), 0
    return _checked_rows(path, strict=strict)


def _plain_rows(path: str) -> Dict[str, Row] | None:
    """The rows of a journal in which nothing is unusual, else None.

    Unusual: text that is not UTF-8, a blank line or one with padding, a line that
    is not exactly one valid record (corrupt or torn), a record that does not
    decode. Each line is parsed from the file's text in place (no line copies, no
    per-line decoding) and checked by the loader's own check. A big journal's
    second half is parsed by a forked child at the same time (:func:`_in_halves`).
    """
    try:
        text = read_nofollow(path, "DLQ file", DLQStorageError).decode("utf-8")
    except UnicodeDecodeError:
        return None
    with gc_paused():
        if len(text) >= PARALLEL_MIN_CHARS and _second_core():
            return _in_halves(text)
        return rows_between(text, 0, len(text))


def _second_core() -> bool:
    """Whether a forked child can parse alongside this process: two usable CPUs, and
    no other thread (a fork copies only the calling one; the CLI has none)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cpus or 1) >= 2 and threading.active_count() == 1


def rows_between(text: str, start: int, stop: int) -> Dict[str, Row] | None:
    """The rows of the lines of ``text[start:stop]`` (``start`` begins a line and
    ``stop`` ends one), or None if one is unusual (see :func:`_plain_rows`)."""
    rows: Dict[str, Row] = {}
    while start < stop:
        end = text.find("\n", start, stop)
        end = stop if end < 0 else end
        try:
            record, after = _scan_once(text, start)
            if after != end or type(record) is not dict or _record_problem(record):
                return None
            row = row_of(record)
        except Exception:  # not JSON, nested too deep, does not decode: read_records says
            return None
        rows[row.entry_id] = row  # a later record of an id replaces it in place
        start = end + 1
    return rows


def _in_halves(text: str) -> Dict[str, Row] | None:
    """:func:`rows_between` of the whole text, the second half parsed by a forked child.

    The child inherits the text (no copy) and sends its rows back marshalled
    through a pipe, or None for an unusual line. If it sends nothing (it died, or
    could not marshal), or cannot be started, this process parses that half itself.
    The child is always reaped; on an error here it is killed first.
    """
    cut = text.find("\n", len(text) // 2) + 1
    started = _start_child(text, cut) if 0 < cut < len(text) else None
    if started is None:
        return rows_between(text, 0, len(text))
    pid, read_end = started
    done = False
    try:
        rows = rows_between(text, 0, cut)
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            payload = pipe.read() if rows is not None else b""
        done = rows is not None
    finally:
        if read_end >= 0:
            os.close(read_end)
        if not done:  # an error here, or an unusual line: the child's rows are not needed
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if rows is None:
        return None
    sent: Any  # rows as tuples, None (an unusual line) or False (nothing came back)
    try:
        sent = marshal.loads(payload) if payload else False
    except (EOFError, ValueError, TypeError):  # cut short: the child died while writing
        sent = False
    if sent is None:  # the child met an unusual line: the whole file goes the checked way
        return None
    if sent is False:  # nothing usable came back: parse that half here
        rest = rows_between(text, cut, len(text))
        if rest is None:
            return None
        second = list(rest.values())
    else:
        second = [_new_row(Row, values) for values in sent]
    for row in second:  # the second half's records come later: a repeated id's wins, in place
        rows[row.entry_id] = row
    return rows


def _start_child(text: str, cut: int) -> Tuple[int, int] | None:
    """``(pid, read end of its pipe)`` of a child parsing ``text[cut:]``; None if the
    system refuses a pipe or a process (too many open files or processes)."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # pragma: no cover - the child (its work is checked through the parent)
        _child(text, cut, read_end, write_end)
    os.close(write_end)
    return pid, read_end


def _child(text: str, cut: int, read_end: int, write_end: int) -> None:  # pragma: no cover
    """The forked half: marshal the rows of ``text[cut:]`` to ``write_end``, then exit."""
    try:
        os.close(read_end)
        rows = rows_between(text, cut, len(text))
        # None says "an unusual line" (so the parent does not parse this half again).
        payload = marshal.dumps(None if rows is None else [tuple(row) for row in rows.values()])
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
    finally:
        os._exit(0)  # nothing of the parent's (atexit, buffers, finally blocks) runs twice


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
