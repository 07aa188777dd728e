"""The filters every ``amorsize dlq`` command shares, and the one pass that applies them.

A filter given several times matches any of its values (OR); different filters
must all match (AND). Error types match case-insensitively, by the short name
or by a dotted suffix of the qualified name (``valueerror``,
``json.JSONDecodeError``); a value that matches no entry gets a warning naming
the nearest existing type.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Callable, List, Sequence

from amorsize.cli.common import _grep, parse_time, positive_int
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.dlq.retention import first_failure
from amorsize.dlq.scan import Row

Test = Callable[[DLQEntry], bool]


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """The filters of summary, list, export, purge and replay."""
    group = parser.add_argument_group(
        "filters (repeat one to match any of its values; different ones must all match)"
    )
    group.add_argument(
        "--error-type", metavar="T", action="append",
        help="error type, any case: short (valueerror), qualified (mypkg.errors.ParseError) "
        "or a dotted suffix of it (errors.ParseError)",
    )
    group.add_argument("--reason", choices=REASONS, metavar="R", action="append",
                       help="why the item was dead-lettered: " + ", ".join(REASONS))
    group.add_argument("--signature", metavar="S", action="append",
                       help="failure signature as `summary --by signature` shows it, or its start")
    group.add_argument("--function", metavar="F", action="append",
                       help="the function that failed (qualified name, or its last parts)")
    group.add_argument("--host", metavar="H", action="append", help="the host it failed on")
    group.add_argument("--since", type=parse_time, metavar="TIME", help="failed at or after TIME")
    group.add_argument("--until", type=parse_time, metavar="TIME", help="failed at or before TIME")
    group.add_argument(
        "--grep", metavar="TEXT",
        help="TEXT occurs in the error type, message, item or traceback",
    )
    group.add_argument("-i", "--ignore-case", action="store_true", help="--grep ignores case")
    group.add_argument("--newest", action="store_true", help="newest first (default: oldest first)")
    group.add_argument("--limit", type=positive_int, metavar="N", help="only the first N matches")


def _type_matches(value: str, entry: DLQEntry) -> bool:
    wanted = value.casefold()
    if entry.error_type.casefold() == wanted:
        return True
    qualified = (entry.error_qualname or entry.error_type).casefold()
    return qualified == wanted or qualified.endswith("." + wanted)


def _warn_unknown_types(values: Sequence[str], entries: Sequence[DLQEntry]) -> None:
    names = sorted({e.error_type for e in entries} | {e.error_qualname or e.error_type for e in entries})
    for value in values:
        if any(_type_matches(value, e) for e in entries):
            continue
        near = difflib.get_close_matches(value, names, n=1, cutoff=0.5) or difflib.get_close_matches(
            value.casefold(), [n.casefold() for n in names], n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"amorsize: warning: no entry has the error type {value!r}{hint}", file=sys.stderr)


def _function_matches(value: str, entry: DLQEntry) -> bool:
    recorded = entry.function
    return recorded is not None and (recorded == value or recorded.endswith("." + value))


def host_of(entry: DLQEntry | Row) -> str | None:
    """The host an entry (``metadata["host"]``) or a summary's row failed on."""
    if isinstance(entry, Row):
        return entry.host
    host = entry.metadata.get("host") if isinstance(entry.metadata, dict) else None
    return host if isinstance(host, str) else None


def entry_tests(args: argparse.Namespace, entries: Sequence[DLQEntry]) -> List[Test]:
    """One test per kind of filter given; an entry must pass all of them."""
    tests: List[Test] = []
    types = getattr(args, "error_type", None)
    if types:
        _warn_unknown_types(types, entries)
        tests.append(lambda e: any(_type_matches(t, e) for t in types))
    reasons = set(getattr(args, "reason", None) or ())
    if reasons:
        tests.append(lambda e: e.reason in reasons)
    signatures = getattr(args, "signature", None)
    if signatures:
        tests.append(lambda e: any(e.signature.startswith(s) for s in signatures))
    functions = getattr(args, "function", None)
    if functions:
        tests.append(lambda e: any(_function_matches(f, e) for f in functions))
    hosts = set(getattr(args, "host", None) or ())
    if hosts:
        tests.append(lambda e: host_of(e) in hosts)
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None:
        tests.append(lambda e: e.timestamp >= since)
    if until is not None:
        tests.append(lambda e: e.timestamp <= until)
    older = getattr(args, "older_than", None)
    if older is not None:
        tests.append(lambda e: first_failure(e) < older)
    if getattr(args, "grep", None) is not None:
        tests.append(_grep(args.grep, args.ignore_case))
    return tests


def select_from(entries: Sequence[DLQEntry], args: argparse.Namespace) -> List[DLQEntry]:
    """The entries passing every filter, oldest first (``--newest``: newest first), ``--limit``."""
    tests = entry_tests(args, entries)
    chosen = [e for e in entries if all(t(e) for t in tests)] if tests else list(entries)
    if getattr(args, "newest", False):
        chosen.reverse()
    limit = getattr(args, "limit", None)
    return chosen[:limit] if limit else chosen


def select(queue: object, args: argparse.Namespace) -> List[DLQEntry]:
    """:func:`select_from` over a queue's entries."""
    return select_from(queue.get_entries(), args)  # type: ignore[attr-defined]
