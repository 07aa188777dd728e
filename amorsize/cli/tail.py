"""``amorsize dlq tail DIR``: print new entries as a running job adds them, like ``tail -f``.

The journal is append-only, so new entries are the bytes past where we last
read. A compaction (purge, replay, pruning) replaces the file: then it is read
again from the start and only ids not printed yet are shown. Read-only: it never
takes a lock, so it never slows the writers down.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Iterator, List, Set

from amorsize.cli.common import EXIT_OK, require_directory
from amorsize.cli.render import clean, entry_record, iso_utc, item_repr, to_json_line, truncate
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.journal import JOURNAL_FILE_NAME
from amorsize.dlq.records import decode_record, parse_line

#: How often the journal is checked for new bytes.
TAIL_POLL_SECONDS = 0.25


class _Follower:
    """Reads complete new lines of one journal, across replacements of the file."""

    def __init__(self, path: str, allow_pickle: bool) -> None:
        self.path = path
        self.allow_pickle = allow_pickle
        self.inode: int | None = None
        self.offset = 0
        self.seen: Set[str] = set()

    def poll(self) -> List[DLQEntry]:
        """The entries appended (or, after a replacement, not yet seen) since the last poll."""
        try:
            with open(self.path, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                if inode != self.inode or os.fstat(handle.fileno()).st_size < self.offset:
                    self.inode, self.offset = inode, 0
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a torn or half-written last line waits for its end
        self.offset += end
        return list(self._decode(data[:end].split(b"\n")))

    def _decode(self, lines: List[bytes]) -> Iterator[DLQEntry]:
        for line in lines:
            record = parse_line(line) if line.strip() else None
            if record is None or record["entry_id"] in self.seen:
                continue
            self.seen.add(record["entry_id"])
            try:
                yield decode_record(record, allow_pickle=self.allow_pickle)
            except Exception as exc:  # shown, not fatal: the job keeps writing
                print(f"amorsize: warning: entry {record['entry_id']} cannot be decoded: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)


def _line(entry: DLQEntry) -> str:
    text = (f"{iso_utc(entry.timestamp)}  {entry.entry_id[:16]}  {entry.reason:<12}  "
            f"{truncate(entry.error_type, 30)}: {truncate(entry.error_message, 120)}  "
            f"item={item_repr(entry.item, limit=80)}")
    return clean(text)


def add_tail_parser(sub: Any, subcommand: Any) -> None:
    """Register ``dlq tail`` (``subcommand`` is the CLI's common subparser factory)."""
    p = subcommand(sub, "tail", "print new entries as they are added (like tail -f)", times=False)
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                   help="first show the last N entries already there (default 10)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_tail)


def cmd_tail(args: argparse.Namespace) -> int:
    require_directory(args.dir)
    follower = _Follower(os.path.join(args.dir, JOURNAL_FILE_NAME), args.allow_pickle)
    show = (lambda e: to_json_line(entry_record(e))) if args.json else _line
    existing = follower.poll()
    for entry in existing[len(existing) - max(0, args.lines):] if args.lines else []:
        print(show(entry), flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(TAIL_POLL_SECONDS)
            for entry in follower.poll():
                print(show(entry), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a tail normally ends
    return EXIT_OK
