"""The ``amorsize`` console script (also ``python -m amorsize``).

```
amorsize dlq summary [DIR] [filters] [--by KEY] [--json]
amorsize dlq list    [DIR] [filters] [--newest] [--limit N] [--offset N | --page P]
                     [--fields F,F] [--wide] [--json]
amorsize dlq show    [DIR] ENTRY_ID [--json]
amorsize dlq export  [DIR] --to FILE.jsonl|FILE.csv|- [filters]
amorsize dlq purge   [DIR] [filters] [--older-than AGE] [--dry-run | -y/--yes]
amorsize dlq replay  [DIR] --func module:function [--any-function] [filters] [--n-jobs N]
                     [--retries N] [--rate N/s] [--timeout S] [--dry-run]
amorsize dlq tail    [DIR] [-n N] [--duration S] [--json]
amorsize dlq migrate [DIR] [--dry-run] [--allow-pickle]
```

Modules: :mod:`.common` (exit codes, opening a queue read-only, filters, the
lock, the one-compaction commit), :mod:`.render` (tables, JSON records),
:mod:`.filters` (the shared filters), :mod:`.listing` (summary, list), :mod:`.newest`
(``list --newest --limit N`` without a full load),
:mod:`.commands` (show, export, purge), :mod:`.replay`, :mod:`.helptext`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List

from amorsize.cli.commands import cmd_export, cmd_purge, cmd_show, export_path
from amorsize.cli.common import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CLIError,
    add_common_options,
    non_negative_int,
    parse_rate,
    parse_time,
    positive_int,
    positive_seconds,
)
from amorsize.cli.filters import add_filter_options
from amorsize.cli.helptext import epilog
from amorsize.cli.listing import GROUP_KEYS, add_list_options, cmd_list, cmd_summary
from amorsize.cli.migrate import add_migrate_parser
from amorsize.cli.tail import add_tail_parser

__all__ = ["build_parser", "main"]

_RAW = argparse.RawDescriptionHelpFormatter

REPLAY_HELP = """\
By default only the entries recorded for a function with the same qualified
name as --func are replayed (the others are counted, by function);
--any-function replays them all. Recovered entries leave the DLQ; entries that
fail again stay, with the new error and retry_count + 1; both in one atomic
rewrite of the journal. Only one replay or purge runs on a DIR at a time.
Ctrl-C finishes the item in progress, saves what is done and exits 130; a
second Ctrl-C stops at once (the item in progress stays in the DLQ as it was).

"""


def _subcommand(sub: argparse._SubParsersAction, name: str, summary: str, *,
                times: bool = True) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=summary, description=summary,
                            epilog=epilog(name, times=times), formatter_class=_RAW)
    add_common_options(parser)
    return parser


def _replay(args: argparse.Namespace) -> int:
    # Imported when used: replay brings the whole engine, which the read commands
    # (summary on a 100k-entry queue has a 1.5 s budget) do not need.
    from amorsize.cli.replay import cmd_replay

    return cmd_replay(args)


def _add_replay(sub: argparse._SubParsersAction) -> None:
    """The ``dlq replay`` subcommand: the one that runs a user's function."""
    p = _subcommand(sub, "replay", "run the (filtered) entries' items again with a fixed function")
    p.add_argument("--func", required=True, metavar="MODULE:FUNCTION",
                   help="the function to call on each item, like mypkg.etl:parse_record or "
                   "mymod:Parser.parse; the current directory is searched first, like python -m")
    p.add_argument("--any-function", action="store_true",
                   help="replay entries recorded for any function, not only --func's")
    add_filter_options(p)
    p.add_argument("--n-jobs", type=positive_int, default=1, metavar="N",
                   help="workers (default 1: serially, in this process)")
    p.add_argument("--backend", choices=("processes", "threads"), default=None,
                   help="where the --n-jobs workers run: processes (the default when N > 1) "
                   "or threads (I/O-bound functions; N threads, even N=1). Async def "
                   "functions work with every choice")
    p.add_argument("--retries", type=non_negative_int, default=0, metavar="N",
                   help="retries per item after the first attempt, with backoff (default 0)")
    p.add_argument("--rate", type=parse_rate, metavar="N/s",
                   help="start at most N items per second (10/s, 10, 0.5/s); runs serially")
    p.add_argument("--timeout", type=positive_seconds, metavar="S",
                   help="seconds each item may run; a slower one fails with reason timeout "
                   "(runs in a worker process)")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be replayed; call and change nothing (the module "
                   "of --func is still imported, to check it)")
    p.set_defaults(handler=_replay)
    p.epilog = REPLAY_HELP + (p.epilog or "")


def _add_read_commands(sub: argparse._SubParsersAction) -> None:
    p = _subcommand(sub, "summary", "counts by error type, reason and function, time span, "
                    "top failure signatures; --by groups by one key")
    add_filter_options(p)
    p.add_argument("--by", choices=list(GROUP_KEYS), metavar="KEY",
                   help="count the entries by one key: " + ", ".join(GROUP_KEYS))
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=cmd_summary)

    p = _subcommand(sub, "list", "a table of entries (times in UTC), or JSON lines")
    add_filter_options(p)
    add_list_options(p)
    p.add_argument("--archived", action="store_true",
                   help="list the archive of entries pruned at max_entries (DIR/dlq.pruned.jsonl)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line; items as stored: the JSON value, or "
                   '{"codec": "cloudpickle", "repr": ...} for a pickled item that is not loaded')
    p.set_defaults(handler=cmd_list)

    p = _subcommand(sub, "show", "one entry in full, with its traceback", times=False)
    p.add_argument("entry_id", metavar="ENTRY_ID", help="the id, or a prefix that only it has")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=cmd_show)

    p = _subcommand(sub, "export", "write the (filtered) entries to a .jsonl or .csv file")
    p.add_argument("--to", required=True, type=export_path, metavar="FILE",
                   help="FILE.jsonl or FILE.csv (the extension picks the format), written "
                   "atomically with mode 0600, replacing FILE; - writes JSON lines to stdout")
    add_filter_options(p)
    p.set_defaults(handler=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the whole command line."""
    from amorsize import __version__

    parser = argparse.ArgumentParser(
        prog="amorsize",
        description="Amorsize: fault-tolerant parallel map. Inspect and replay dead letter queues.",
        epilog=EXIT_CODES_HELP,
        formatter_class=_RAW,
    )
    parser.add_argument("--version", action="version", version=f"amorsize {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    dlq = commands.add_parser(
        "dlq", help="inspect, export, purge and replay a dead letter queue on disk",
        description="Inspect, export, purge and replay the dead letter queue in DIR "
        "(DIR/dlq.jsonl). summary, list, show, export and tail never change anything.",
        epilog=EXIT_CODES_HELP, formatter_class=_RAW,
    )
    sub = dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND")
    _add_read_commands(sub)

    p = _subcommand(sub, "purge", "remove the (filtered) entries; a dry run unless --yes")
    add_filter_options(p)
    p.add_argument("--older-than", type=parse_time, metavar="AGE",
                   help="only entries whose first failure is older than AGE (7d, 12h) or "
                   "before a time; what DLQPolicy(max_age_seconds=...) drops")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="only show what would be removed (the default)")
    mode.add_argument("-y", "--yes", action="store_true",
                      help="really remove them (one atomic rewrite of the journal)")
    p.set_defaults(handler=cmd_purge)

    _add_replay(sub)
    add_tail_parser(sub, _subcommand)
    add_migrate_parser(sub, _subcommand)
    parser.set_defaults(parsers={"": parser, "dlq": dlq})
    return parser


class _StderrHandler(logging.Handler):
    """Library log lines as ``amorsize: warning: ...`` on the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"amorsize: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _setup_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: List[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits 2 on bad usage itself)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        which = args.parsers["dlq" if args.command == "dlq" else ""]
        which.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_output()
    log_handler = _StderrHandler(logging.WARNING)
    logging.getLogger("amorsize").addHandler(log_handler)
    try:
        return int(handler(args))
    except CLIError as exc:
        print(f"amorsize: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("amorsize: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`amorsize dlq list DIR | head`): stop quietly, as `cat` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    finally:
        logging.getLogger("amorsize").removeHandler(log_handler)
