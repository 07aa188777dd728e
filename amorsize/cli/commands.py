"""``amorsize dlq show | export | purge`` (summary and list are in :mod:`.listing`)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from typing import Any, Dict, List

from amorsize._fs import refuse_symlink
from amorsize.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    commit,
    exclusive_lock,
    open_queue,
    refuse_corrupt,
    require_directory,
)
from amorsize.cli.filters import select
from amorsize.cli.render import (
    entry_details,
    entry_record,
    preview_table,
    to_json_line,
)
from amorsize.dlq.entry import DLQEntry

EXPORT_FORMATS = (".jsonl", ".csv")
EXPORT_MODE = 0o600
CSV_FIELDS = ("entry_id", "time", "timestamp", "reason", "error_type", "error_qualname",
              "error_message", "retry_count", "item_codec", "item", "metadata", "traceback")


def export_path(text: str) -> str:
    """``--to``: a path ending in .jsonl or .csv, or ``-`` for stdout (bad ones exit 2)."""
    if text == "-":
        return text
    if os.path.splitext(text)[1].lower() not in EXPORT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the file name must end in .jsonl or .csv (that picks the format)"
        )
    return text


def find_entry(entries: List[DLQEntry], wanted: str, directory: str) -> DLQEntry:
    """The entry whose id is ``wanted``, or the only one starting with it (exit 2 otherwise)."""
    wanted = wanted.strip().lower()
    if not wanted:
        raise CLIError("ENTRY_ID is empty", EXIT_USAGE)
    for entry in entries:
        if entry.entry_id == wanted:
            return entry
    matches = [e for e in entries if e.entry_id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CLIError(f"no entry in {directory} has an id starting with {wanted!r}", EXIT_USAGE,
                       hint=f"`amorsize dlq list {directory}` shows the ids")
    shown = ", ".join(e.entry_id for e in matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise CLIError(f"{wanted!r} is the start of {len(matches)} entry ids ({shown})", EXIT_USAGE,
                   hint="give more characters of the id")


def cmd_show(args: argparse.Namespace) -> int:
    queue = open_queue(args)
    entry = find_entry(queue.get_entries(), args.entry_id, args.dir)
    print(to_json_line(entry_record(entry)) if args.json else entry_details(entry))
    return EXIT_OK


def _csv_cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would run as a formula gets a leading quote."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if text[:1] in ("=", "+", "@", "\t", "\r") or (text[:1] == "-" and not _is_number(text)):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _write_export(path: str, records: List[Dict[str, Any]]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    refuse_symlink(path, "the export target")  # replacing a planted link is following it
    fd, temp = tempfile.mkstemp(prefix=".amorsize-export-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, EXPORT_MODE)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            if path.lower().endswith(".csv"):
                writer = csv.writer(handle)
                writer.writerow(CSV_FIELDS)
                for record in records:
                    writer.writerow([
                        "" if record[f] is None else _csv_cell(record[f]) for f in CSV_FIELDS
                    ])
            else:
                for record in records:
                    handle.write(to_json_line(record) + "\n")
        refuse_symlink(path, "the export target")
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def cmd_export(args: argparse.Namespace) -> int:
    queue = open_queue(args)
    records = [entry_record(e) for e in select(queue, args)]
    if args.to == "-":
        write = sys.stdout.write
        for record in records:
            write(to_json_line(record) + "\n")
        print(f"exported {len(records)} of {len(queue)} entries to stdout", file=sys.stderr)
        return EXIT_OK
    try:
        _write_export(args.to, records)
    except OSError as exc:
        raise CLIError(f"cannot write {args.to}: {exc.strerror or exc}", EXIT_USAGE) from None
    print(f"exported {len(records)} of {len(queue)} entries to {args.to} (mode 0600)")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    require_directory(args.dir)
    if not args.yes:
        queue = open_queue(args)
        entries = select(queue, args)
        if not entries:
            print(f"nothing to purge: no entries match ({len(queue)} in the DLQ)")
            return EXIT_OK
        print(f"would remove {len(entries)} of {len(queue)} entries:")
        print(preview_table(entries, all_ids=[e.entry_id for e in queue.get_entries()]))
        print("dry run: nothing was removed; add --yes (or -y) to remove them")
        return EXIT_OK
    with exclusive_lock(args.dir, "purge"):
        queue = open_queue(args)
        refuse_corrupt(queue, "purge")
        entries = select(queue, args)
        total = len(queue)
        commit(queue, [], [e.entry_id for e in entries])
    print(f"removed {len(entries)} of {total} entries; {total - len(entries)} left")
    return EXIT_OK
