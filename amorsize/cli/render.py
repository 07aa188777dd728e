"""How the CLI shows entries: tables sized to the terminal, JSON records, times, safe text.

Everything printed from an entry went through :func:`clean` first: error messages
and items come from users' data, and a terminal must not run the escape
sequences they may hold.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from typing import Any, Dict, Sequence

from amorsize.dlq.entry import DLQEntry
from amorsize.serialization import (
    PickledPayload,
    PickledValue,
    UnserializableItem,
    is_json_native,
    short_repr,
)

#: Width used when stdout is not a terminal and COLUMNS is not set.
FALLBACK_COLUMNS = 120
#: Entry ids are shown abbreviated to the shortest unique prefix, but never shorter.
MIN_ID_WIDTH = 12
#: Reports (purge preview, replay results) show at most this many rows per table.
REPORT_ROWS = 20
ELLIPSIS = "..."

# C0 and C1 controls (tab and newline are handled apart) and the bidi overrides that
# can make text read differently from what it is.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    char = match.group(0)
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str, *, multiline: bool = False) -> str:
    """``text`` with control characters escaped; newlines too unless ``multiline``."""
    if not multiline:
        text = text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\t", " ")
    return _UNSAFE.sub(_escape, text)


def truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    return text[: width - len(ELLIPSIS)] + ELLIPSIS


def iso_utc(timestamp: float, timespec: str = "seconds") -> str:
    """POSIX time as ISO 8601 in UTC with a ``Z``."""
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError, TypeError):
        return str(timestamp)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def terminal_columns() -> int:
    """The terminal width (COLUMNS wins; FALLBACK_COLUMNS when stdout is not a terminal)."""
    return shutil.get_terminal_size((FALLBACK_COLUMNS, 24)).columns


# --- items ----------------------------------------------------------------------


def item_codec(item: Any) -> str:
    """How ``item`` is given in JSON output: ``json`` (the value itself) or a placeholder."""
    if isinstance(item, UnserializableItem):
        return "repr"
    if is_json_native(item):
        return "json"
    return "cloudpickle"


def jsonable(value: Any) -> Any:
    """``value`` for JSON output: itself when JSON-native, else ``{"codec": ..., "repr": ...}``."""
    if isinstance(value, (PickledPayload, PickledValue)):
        return {"codec": "cloudpickle", "repr": value.repr}
    if isinstance(value, UnserializableItem):
        return {"codec": "repr", "repr": value.repr, "type_name": value.type_name,
                "error": value.error}
    if is_json_native(value):
        return value
    return {"codec": "cloudpickle", "repr": short_repr(value)}


def item_repr(item: Any, *, limit: int | None = 2000) -> str:
    """Readable one-line text of an item: JSON for JSON values, else its (stored) repr."""
    if isinstance(item, PickledPayload):
        text = "[pickled] " + (item.repr or f"{len(item.data)} bytes")
    elif isinstance(item, UnserializableItem):
        text = f"<unserializable {item.type_name}: {item.repr}>"
    elif is_json_native(item):
        text = json.dumps(item, ensure_ascii=False)
    else:
        text = short_repr(item) if limit is not None else repr(item)
    return text if limit is None else truncate(text, limit)


def entry_record(entry: DLQEntry) -> Dict[str, Any]:
    """One entry as the JSON object of ``list --json`` and ``export``."""
    return {
        "entry_id": entry.entry_id,
        "time": iso_utc(entry.timestamp, "milliseconds"),
        "timestamp": entry.timestamp,
        "reason": entry.reason,
        "error_type": entry.error_type,
        "error_qualname": entry.error_qualname,
        "error_message": entry.error_message,
        "retry_count": entry.retry_count,
        "item_codec": item_codec(entry.item),
        "item": jsonable(entry.item),
        "metadata": jsonable(entry.metadata),
        "traceback": entry.traceback,
    }


def to_json_line(record: Dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


# --- tables -----------------------------------------------------------------------


def id_width(ids: Sequence[str]) -> int:
    """The shortest prefix length (at least MIN_ID_WIDTH) that tells all ``ids`` apart."""
    if not ids:
        return MIN_ID_WIDTH
    ordered = sorted(ids)
    width = MIN_ID_WIDTH
    for left, right in zip(ordered, ordered[1:]):
        common = next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
        width = max(width, common + 1)
    return min(width, max(len(i) for i in ordered))


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    flexible: Sequence[int] = (),
    droppable: Sequence[int] = (),
    minimum: int = 10,
    comfortable: int = 10,
    columns: int | None = None,
) -> str:
    """Left-aligned columns two spaces apart, fitted to ``columns`` (the terminal).

    The ``flexible`` columns shrink (the widest first, not below ``minimum``) and
    their cells are cut with ``...``. While they would get less than
    ``comfortable`` characters, the ``droppable`` columns are left out, in order.
    """
    total = terminal_columns() if columns is None else columns
    cells = [[clean(str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    floors = {i: min(widths[i], max(minimum, len(headers[i]))) for i in flexible}
    shown = list(range(len(headers)))

    wanted = {i: min(widths[i], max(comfortable, floors[i])) for i in flexible}

    def narrowest() -> int:
        return sum(wanted.get(i, widths[i]) for i in shown) + 2 * (len(shown) - 1)

    for i in droppable:
        if narrowest() <= total:
            break
        shown.remove(i)
    excess = sum(widths[i] for i in shown) + 2 * (len(shown) - 1) - total
    while excess > 0:
        shrinkable = [i for i in flexible if i in shown and widths[i] > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        target = max([floors[widest]] + [widths[i] for i in shrinkable if i != widest])
        step = max(1, min(excess, widths[widest] - target))
        widths[widest] -= step
        excess -= step
    lines = []
    for row in [list(headers), *cells]:
        parts = [truncate(row[i], widths[i]).ljust(widths[i]) for i in shown]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def entries_table(entries: Sequence[DLQEntry], *, all_ids: Sequence[str] = ()) -> str:
    """The ``list`` table: id, time, reason, error type, retries, message, item."""
    width = id_width(list(all_ids) or [e.entry_id for e in entries])
    headers = ["ID", "TIME (UTC)", "REASON", "ERROR", "RETRIES", "MESSAGE", "ITEM"]
    rows = [
        [
            e.entry_id[:width],
            iso_utc(e.timestamp),
            e.reason,
            truncate(e.error_type, 30),
            str(e.retry_count),
            truncate(e.error_message, 200),
            item_repr(e.item, limit=200),
        ]
        for e in entries
    ]
    return format_table(headers, rows, flexible=[5, 6, 3], droppable=[2, 4],
                        comfortable=20)


def more_rows(total: int, shown: int) -> str:
    return f"... and {total - shown} more" if total > shown else ""


def preview_table(entries: Sequence[DLQEntry], *, all_ids: Sequence[str]) -> str:
    """The ``list`` table of the first REPORT_ROWS entries, and how many more there are."""
    text = entries_table(entries[:REPORT_ROWS], all_ids=all_ids)
    more = more_rows(len(entries), REPORT_ROWS)
    return f"{text}\n{more}" if more else text


# --- one entry, the summary ---------------------------------------------------------


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _continued(text: str) -> str:
    """Indent the lines after the first one under a ``label:      `` column."""
    return text.replace("\n", "\n" + " " * 14)


def entry_details(entry: DLQEntry) -> str:
    """Every field of one entry, with its traceback (``show``)."""
    error = entry.error_type
    if entry.error_qualname and entry.error_qualname != entry.error_type:
        error += f" ({entry.error_qualname})"
    if isinstance(entry.item, PickledPayload):
        item = f"{clean(repr(entry.item))}\n    (stored as cloudpickle bytes; pass --allow-pickle to load it)"
    elif is_json_native(entry.item) and not isinstance(entry.item, str):
        text = json.dumps(entry.item, ensure_ascii=False)
        if len(text) > 60:
            text = "\n" + _indent(json.dumps(entry.item, ensure_ascii=False, indent=2))
        item = clean(text, multiline=True)
    else:
        item = clean(item_repr(entry.item, limit=None))
    metadata = json.dumps(jsonable(entry.metadata), ensure_ascii=False, sort_keys=True)
    lines = [
        f"entry_id:     {entry.entry_id}",
        f"time (UTC):   {iso_utc(entry.timestamp, 'microseconds')}",
        f"reason:       {entry.reason}",
        f"error type:   {clean(error)}",
        f"message:      {_continued(clean(entry.error_message, multiline=True))}",
        f"retry_count:  {entry.retry_count}",
        f"item:         {item}",
        f"metadata:     {clean(metadata)}",
    ]
    if entry.traceback:
        lines.append("traceback:")
        lines.append(_indent(clean(entry.traceback.rstrip("\n"), multiline=True)))
    else:
        lines.append("traceback:    (not recorded)")
    return "\n".join(lines)


def summary_record(summary: Dict[str, Any], directory: str, pickled: int) -> Dict[str, Any]:
    """A ``get_summary()`` plus where the queue is, ISO times and the count of ``pickled``
    items not loaded."""
    summary = dict(summary)
    summary["directory"] = os.path.abspath(directory)
    for key in ("oldest", "newest"):
        stamp = summary.get(f"{key}_timestamp")
        summary[f"{key}_time"] = iso_utc(stamp) if stamp is not None else None
    summary["pickled_not_loaded"] = pickled
    summary["top_messages"] = [list(pair) for pair in summary.get("top_messages", [])]
    return summary


def _counts(counter: Dict[str, int]) -> str:
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{clean(name)} {count}" for name, count in ordered) or "-"


def summary_text(summary: Dict[str, Any]) -> str:
    """The human summary."""
    total = summary["total_entries"]
    lines = [f"DLQ:            {summary['directory']}", f"entries:        {total}"]
    if total:
        lines += [
            f"oldest (UTC):   {summary['oldest_time']}",
            f"newest (UTC):   {summary['newest_time']}",
            f"by error type:  {_counts(summary['error_types'])}",
            f"by reason:      {_counts(summary['reasons'])}",
            f"by function:    {_counts(summary.get('functions', {}))}",
            f"avg retries:    {summary['avg_retry_count']:.2f}",
            "top signatures (`--by signature` lists all):",
        ]
        width = max(20, terminal_columns() - 12)
        for group in summary.get("signatures", []):
            lines.append(f"  {group['count']:>6}  {truncate(clean(group['signature']), width)}")
    if summary["pickled_not_loaded"]:
        lines.append(
            f"pickled items:  {summary['pickled_not_loaded']} stored as cloudpickle bytes, not "
            "loaded (shown by their stored repr; --allow-pickle loads them)"
        )
    if summary.get("corrupt_skipped"):
        lines.append(f"corrupt records skipped: {summary['corrupt_skipped']} (--no-strict)")
    return "\n".join(lines)
