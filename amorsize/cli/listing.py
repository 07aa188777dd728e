"""``amorsize dlq summary`` and ``amorsize dlq list``: reading a queue of any size.

Both take the shared filters (:mod:`amorsize.cli.filters`). ``summary --by KEY``
groups the selected entries by signature, error type, reason, function or host;
``list`` pages (``--newest``, ``--limit``, ``--offset``/``--page``) and picks its
columns (``--fields``, ``--wide``). When the terminal is too narrow for every
column, one line on stderr names the ones left out and how to see them.
"""

from __future__ import annotations

import argparse
import collections
import json
import operator
import sys
from typing import Any, Callable, Dict, List, Sequence, Tuple

from amorsize.cli import newest
from amorsize.cli.common import EXIT_OK, open_queue, scan_rows
from amorsize.cli.filters import host_of, select_from
from amorsize.cli.migrate import warn_seed_files
from amorsize.cli.render import (
    clean,
    entry_record,
    format_table,
    id_width,
    iso_utc,
    item_repr,
    summary_record,
    summary_text,
    terminal_columns,
    to_json_line,
    truncate,
)
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.scan import Row
from amorsize.dlq.summary import summarize
from amorsize.serialization import PickledPayload

#: Rows per page of ``list --page`` when ``--limit`` is not given.
DEFAULT_PAGE_SIZE = 50
#: Groups ``summary --by`` prints (every group with ``--json``).
BY_ROWS = 20


def _host(entry: DLQEntry) -> str:
    return host_of(entry) or "<unknown>"


#: ``summary --by`` keys and how each reads an entry.
GROUP_KEYS: Dict[str, Callable[[DLQEntry], str]] = {
    "signature": lambda e: e.signature,
    "error-type": lambda e: e.error_qualname or e.error_type,
    "reason": lambda e: e.reason,
    "function": lambda e: e.function or "<unknown>",
    "host": _host,
}

#: ``list`` columns: header, cell of an entry (the id column is special: see _id_cell).
COLUMNS: Dict[str, Any] = {
    "id": ("ID", None),
    "time": ("TIME (UTC)", lambda e: iso_utc(e.timestamp)),
    "reason": ("REASON", lambda e: e.reason),
    "error": ("ERROR", lambda e: truncate(e.error_type, 30)),
    "retries": ("RETRIES", lambda e: str(e.retry_count)),
    "message": ("MESSAGE", lambda e: truncate(e.error_message, 200)),
    "item": ("ITEM", lambda e: item_repr(e.item, limit=200)),
    "signature": ("SIGNATURE", lambda e: truncate(e.signature, 200)),
    "function": ("FUNCTION", lambda e: e.function or "-"),
    "host": ("HOST", _host),
}
DEFAULT_FIELDS = ("id", "time", "reason", "error", "retries", "message", "item")
#: Columns left out first when the terminal is narrow, in order.
DROP_ORDER = ("reason", "retries", "function", "host")
#: Columns that shrink (cut with ...) to fit, in order of preference.
SHRINK_ORDER = ("message", "item", "signature", "error")


def parse_fields(text: str) -> List[str]:
    """``--fields id,time,message``: known column names, comma separated."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in COLUMNS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown field(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(COLUMNS)}"
        )
    return names


def add_list_options(parser: argparse.ArgumentParser) -> None:
    """Paging and columns of ``list``."""
    group = parser.add_argument_group("paging and columns")
    group.add_argument("--offset", type=int, default=0, metavar="N",
                       help="skip the first N matches (after --newest)")
    group.add_argument("--page", type=int, metavar="P",
                       help=f"page P (from 1) of --limit rows (default {DEFAULT_PAGE_SIZE})")
    group.add_argument("--fields", type=parse_fields, metavar="F,F",
                       help="columns to show: " + ",".join(COLUMNS))
    group.add_argument("--wide", action="store_true",
                       help="never leave out or cut columns to fit the terminal")


def _page(args: argparse.Namespace, entries: List[DLQEntry]) -> List[DLQEntry]:
    if args.page is not None:
        size = args.limit or DEFAULT_PAGE_SIZE
        return entries[(max(1, args.page) - 1) * size:][:size]
    chosen = entries[max(0, args.offset):]
    return chosen[: args.limit] if args.limit else chosen


def _table(entries: Sequence[DLQEntry], fields: Sequence[str], all_ids: Sequence[str],
           wide: bool) -> tuple[str, List[str]]:
    width = id_width(list(all_ids) or [e.entry_id for e in entries])
    headers = [COLUMNS[f][0] for f in fields]
    rows = [[e.entry_id[:width] if f == "id" else COLUMNS[f][1](e) for f in fields] for e in entries]
    if wide:
        return format_table(headers, rows, columns=10**6), []
    flexible = [fields.index(f) for f in SHRINK_ORDER if f in fields]
    droppable = [fields.index(f) for f in DROP_ORDER if f in fields]
    text = format_table(headers, rows, flexible=flexible, droppable=droppable, comfortable=20)
    first = text.split("\n", 1)[0]
    dropped = [fields[i] for i in droppable if COLUMNS[fields[i]][0] not in first]
    return text, dropped


def cmd_list(args: argparse.Namespace) -> int:
    if newest.applies(args):  # the common "what failed last": only those entries are decoded
        entries, all_ids = newest.newest(args)
        matching_count = len(all_ids)
    else:
        everything = open_queue(args).get_entries()
        limit, args.limit = args.limit, None  # paging applies after the filters
        matching = select_from(everything, args)
        args.limit = limit
        entries = _page(args, matching)
        all_ids, matching_count = [e.entry_id for e in everything], len(matching)
    if args.json:
        write = sys.stdout.write
        for entry in entries:
            write(to_json_line(entry_record(entry)) + "\n")
        return EXIT_OK
    total = len(all_ids)
    if not entries:
        print("the DLQ is empty" if not total else f"no entries match ({total} in the DLQ)")
        return EXIT_OK
    fields = args.fields or list(DEFAULT_FIELDS)
    text, dropped = _table(entries, fields, all_ids, args.wide)
    print(text)
    if len(entries) < matching_count:
        print(f"{len(entries)} shown of {matching_count} matching ({total} in the DLQ); "
              "--offset N or --page P shows more")
    else:
        print(f"{len(entries)} of {total} entries")
    if dropped:
        print(f"columns left out to fit {terminal_columns()} columns: {', '.join(dropped)}; "
              "see them with --fields, --wide or --json", file=sys.stderr)
    return EXIT_OK


def groups(entries: Sequence[DLQEntry], by: str) -> List[Dict[str, Any]]:
    """``[{"key", "count", "example"}]`` of ``entries`` grouped by ``by``, most common first."""
    key_of = GROUP_KEYS[by]
    counts: collections.Counter[str] = collections.Counter()
    examples: Dict[str, DLQEntry] = {}
    for entry in entries:
        key = key_of(entry)
        counts[key] += 1
        examples.setdefault(key, entry)
    return [{"key": key, "count": count, "example": {
        "entry_id": examples[key].entry_id, "error_message": examples[key].error_message}}
        for key, count in counts.most_common()]


def _groups_text(grouped: List[Dict[str, Any]], by: str) -> str:
    width = max(20, terminal_columns() - 10)
    lines = [f"{'COUNT':>7}  {by.upper()}"]
    for group in grouped[:BY_ROWS]:
        lines.append(f"{group['count']:>7}  {truncate(clean(group['key']), width)}")
        if by == "signature":
            example = clean(group["example"]["error_message"])
            lines.append(f"{'':>7}    e.g. {truncate(example, width - 9)}")
    if len(grouped) > BY_ROWS:
        lines.append(f"... and {len(grouped) - BY_ROWS} more groups (--json shows all)")
    return "\n".join(lines)


def _read_for_summary(args: argparse.Namespace) -> Tuple[Dict[str, Any], Sequence[Any]]:
    """``(get_summary() of the whole queue, its entries or rows)``.

    Rows (:mod:`amorsize.dlq.scan`) unless an item is needed: ``--grep`` reads items,
    ``--allow-pickle`` loads them (and reports one that does not load).
    """
    if args.allow_pickle or getattr(args, "grep", None) is not None:
        queue = open_queue(args)
        return queue.get_summary(), queue.get_entries()
    found = scan_rows(args)
    return found.get_summary(), found.rows


def cmd_summary(args: argparse.Namespace) -> int:
    whole, everything = _read_for_summary(args)
    warn_seed_files(args.dir)
    entries = select_from(everything, args)
    if args.by:
        grouped = groups(entries, args.by)
        if args.json:
            print(json.dumps({"by": args.by, "total_entries": len(entries), "groups": grouped}))
        else:
            print(_groups_text(grouped, args.by))
        return EXIT_OK
    summary = summary_record(whole, args.dir, _pickled(entries))
    if len(entries) != len(everything):
        health = {k: summary[k] for k in ("pruned", "persist_errors", "corrupt_skipped")}
        summary.update(summarize(entries, **health))
        summary["top_messages"] = [list(p) for p in summary["top_messages"]]
        summary["selected_of"] = len(everything)
        for key in ("oldest", "newest"):
            stamp = summary.get(f"{key}_timestamp")
            summary[f"{key}_time"] = iso_utc(stamp) if stamp is not None else None
    print(json.dumps(summary, sort_keys=True) if args.json else summary_text(summary))
    return EXIT_OK


def _pickled(entries: Sequence[Any]) -> int:
    """How many items are stored pickled and not loaded: rows say so, entries hold a placeholder."""
    if entries and isinstance(entries[0], Row):
        return sum(map(operator.attrgetter("pickled"), entries))
    return sum(isinstance(e.item, PickledPayload) for e in entries)
