"""What every ``amorsize dlq`` command shares: exit codes, opening a queue, filters, the lock.

Read commands (summary, list, show, export) never create or change a file: the
directory must exist, and the queue constructor only reads an existing journal.
Commands that change the queue (purge, replay) take ``<DIR>/.replay.lock``
first and commit with one compaction (``DeadLetterQueue.update``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import math
import os
import re
import signal
import sys
import time
import warnings
from typing import Callable, Iterable, Iterator, List

from amorsize._fs import open_nofollow
from amorsize.cli.render import item_repr
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.dlq.journal import ARCHIVE_FILE_NAME, JOURNAL_FILE_NAME
from amorsize.dlq.policy import DLQPolicy
from amorsize.dlq.queue import DeadLetterQueue
from amorsize.dlq.scan import QueueScan, scan_queue
from amorsize.errors import DLQCorruptError

# --- exit codes (documented in the --help epilog) -----------------------------

EXIT_OK = 0
EXIT_STILL_FAILING = 1
EXIT_USAGE = 2
EXIT_DLQ_UNREADABLE = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT; a SIGTERM gives 143

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    replay: some entries still fail (they stay in the DLQ with retry_count + 1)
  2    usage error: a bad option or value (unknown reason, bad time, bad --func, ...),
       an entry id that matches no entry or several, pickled items without --allow-pickle
  3    no DLQ at DIR, or the DLQ is corrupt (file and line on stderr) or cannot be
       read or written
  4    another replay or purge is running on DIR (it holds DIR/.replay.lock)
  130  interrupted by Ctrl-C (143: SIGTERM); a replay first saves what it finished

Times are shown in UTC. --since/--until take ISO 8601 (2024-05-01T03:00:00Z; no
offset means UTC) or an age (90s, 30m, 2h, 1d, 1w).
"""

#: Serializes the commands that change a queue (purge, replay) on one directory.
REPLAY_LOCK_NAME = ".replay.lock"


class CLIError(Exception):
    """A failure to report on stderr as ``amorsize: error: ...`` with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


# --- argument types -----------------------------------------------------------

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str) -> float:
    """``--since``/``--until``: ISO 8601 (no offset means UTC) or an age like ``2h``, as POSIX time."""
    value = text.strip()
    age = _AGE.fullmatch(value)
    if age:
        return time.time() - float(age.group(1)) * _AGE_UNITS[age.group(2)]
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (like 2024-05-01T03:00:00Z) "
            "or an age (like 30m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def positive_int(text: str) -> int:
    """An int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def positive_seconds(text: str) -> float:
    """``--timeout``: seconds > 0, like ``30`` or ``2.5``."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:/s)?")


def parse_rate(text: str) -> float:
    """``--rate``: items started per second, as ``10/s``, ``10`` or ``0.5/s``."""
    match = _RATE.fullmatch(text.strip())
    value = float(match.group(1)) if match else 0.0
    if not match or value <= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate; expected items per second > 0, like 10/s, 10 or 0.5/s"
        )
    return value


#: The environment variable naming the CLI's default DLQ directory.
DLQ_DIR_ENV = "AMORSIZE_DLQ_DIR"


def default_directory() -> str:
    """``$AMORSIZE_DLQ_DIR``, else the directory ``DLQPolicy()`` uses."""
    return os.environ.get(DLQ_DIR_ENV) or DLQPolicy().path


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """DIR and the options every dlq subcommand takes."""
    parser.add_argument(
        "dir", metavar="DIR", nargs="?", default=default_directory(),
        help="the DLQ directory (it holds dlq.jsonl); default: $AMORSIZE_DLQ_DIR, else the "
        f"library's default {DLQPolicy().path} (now: {default_directory()})",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load items stored as cloudpickle bytes. Unpickling runs code: only use it on "
        "files you trust. Without it they show as their stored repr and cannot be replayed.",
    )
    parser.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a corrupt record before the last line is an error, exit 3 (default); with "
        "--no-strict it is skipped and counted in the summary (purge and replay refuse "
        "to rewrite such a file)",
    )


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """The filters of list, export, purge and replay; an entry must match all of them."""
    group = parser.add_argument_group("filters (an entry must match all that are given)")
    group.add_argument(
        "--error-type", metavar="T",
        help="error type, short (ValueError) or qualified (mypkg.errors.ParseError)",
    )
    group.add_argument("--reason", choices=REASONS, metavar="R",
                       help="why the item was dead-lettered: " + ", ".join(REASONS))
    group.add_argument("--since", type=parse_time, metavar="TIME", help="failed at or after TIME")
    group.add_argument("--until", type=parse_time, metavar="TIME", help="failed at or before TIME")
    group.add_argument(
        "--grep", metavar="TEXT",
        help="TEXT occurs in the error type, message, item or traceback",
    )
    group.add_argument("-i", "--ignore-case", action="store_true", help="--grep ignores case")
    group.add_argument(
        "--limit", type=positive_int, metavar="N", help="only the first N matches (oldest first)"
    )


# --- opening and selecting ------------------------------------------------------


def require_directory(directory: str) -> None:
    """Exit 3 unless ``directory`` exists and is a directory; never creates it."""
    if not os.path.exists(directory):
        raise CLIError(f"no DLQ at {directory}: the directory does not exist", EXIT_DLQ_UNREADABLE)
    if not os.path.isdir(directory):
        raise CLIError(f"no DLQ at {directory}: not a directory", EXIT_DLQ_UNREADABLE)


def open_queue(args: argparse.Namespace) -> DeadLetterQueue:
    """The queue at ``args.dir``; never prunes (max_entries=0), never writes.

    Raises:
        CLIError: no directory, or the journal is corrupt or unreadable (exit 3).
    """
    require_directory(args.dir)
    archived = getattr(args, "archived", False)
    journal = os.path.join(args.dir, ARCHIVE_FILE_NAME if archived else JOURNAL_FILE_NAME)
    policy = DLQPolicy(
        directory=args.dir,
        allow_pickle=args.allow_pickle,
        auto_persist=not archived,
        max_entries=0,
        strict=args.strict,
    )
    with reading(journal, args.allow_pickle):
        queue = DeadLetterQueue(policy, _migrate=False)  # read-only: `dlq migrate` migrates
        if archived and os.path.lexists(journal):
            queue.load(journal)  # the archive of pruned entries, read like a journal
    return queue


def scan_rows(args: argparse.Namespace) -> QueueScan:
    """The queue at ``args.dir`` read as rows (no items; see :mod:`amorsize.dlq.scan`).

    Raises:
        CLIError: as :func:`open_queue`.
    """
    require_directory(args.dir)
    with reading(os.path.join(args.dir, JOURNAL_FILE_NAME), False):
        found = scan_queue(args.dir, strict=args.strict)
    return found


@contextlib.contextmanager
def reading(journal: str, allow_pickle: bool) -> Iterator[None]:
    """Read ``journal`` in the block: its errors become exit 3 with file and line, its
    warnings (a torn last record) stderr lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except DLQCorruptError as exc:
            raise CLIError(
                f"corrupt DLQ: {exc.path}, line {exc.line}: {exc.detail}",
                EXIT_DLQ_UNREADABLE,
                hint="pass --no-strict to skip unreadable records (they are counted in "
                "`amorsize dlq summary`)",
            ) from None
        except OSError as exc:
            raise CLIError(
                f"cannot read the DLQ file {journal}: {exc.strerror or exc}", EXIT_DLQ_UNREADABLE
            ) from None
        except Exception as exc:  # a record that parses but does not decode
            raise CLIError(
                f"cannot read the DLQ file {journal}: {type(exc).__name__}: {exc}",
                EXIT_DLQ_UNREADABLE,
                hint="--allow-pickle needs the item classes importable: run from the "
                "project directory or set PYTHONPATH" if allow_pickle else None,
            ) from None
    for warning in caught:
        print(f"amorsize: warning: {warning.message}", file=sys.stderr)


def _grep(text: str, ignore_case: bool) -> Callable[[DLQEntry], bool]:
    needle = text.casefold() if ignore_case else text

    def matches(entry: DLQEntry) -> bool:
        fields = (entry.error_type, entry.error_qualname or "", entry.error_message,
                  item_repr(entry.item, limit=None), entry.traceback or "")
        return any(needle in (f.casefold() if ignore_case else f) for f in fields)

    return matches


def select(queue: DeadLetterQueue, args: argparse.Namespace) -> List[DLQEntry]:
    """The entries matching the filter options, oldest first, at most ``--limit``."""
    predicate = _grep(args.grep, args.ignore_case) if args.grep is not None else None
    entries = queue.filter(
        error_type=args.error_type,
        reason=args.reason,
        since=args.since,
        until=args.until,
        predicate=predicate,
    )
    return entries[: args.limit] if args.limit else entries


def refuse_corrupt(queue: DeadLetterQueue, command: str) -> None:
    """Exit 3 if records were skipped: rewriting the file would drop them for good."""
    skipped = queue.get_summary()["corrupt_skipped"]
    if skipped:
        raise CLIError(
            f"{command} refused: {skipped} corrupt record(s) were skipped (--no-strict) and "
            "rewriting the journal would drop them for good",
            EXIT_DLQ_UNREADABLE,
            hint="export what is readable with `amorsize dlq export --no-strict`, then repair "
            "or move the file",
        )


# --- changing the queue ------------------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(directory: str, command: str) -> Iterator[None]:
    """Hold ``<directory>/.replay.lock`` (flock, non-blocking) or exit 4."""
    path = os.path.join(directory, REPLAY_LOCK_NAME)
    try:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, "the lock file")  # never a symlink
    except OSError as exc:
        raise CLIError(f"cannot create the lock file {path}: {exc.strerror or exc}",
                       EXIT_DLQ_UNREADABLE) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("ascii", "replace").strip()
            raise CLIError(
                f"another replay or purge is running on {directory} (it holds {path}"
                + (f": pid {holder}" if holder else "") + ")",
                EXIT_LOCKED,
                hint="try again when it has finished",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done (they are delivered after it)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def commit(queue: DeadLetterQueue, updated: Iterable[DLQEntry], remove_ids: Iterable[str]) -> None:
    """One atomic compaction: replace ``updated`` and drop ``remove_ids``.

    Ctrl-C and SIGTERM wait until it is done, so a commit is never cut in half.

    Raises:
        CLIError: the journal could not be rewritten (exit 3); the file is unchanged.
    """
    updated, remove_ids = list(updated), list(remove_ids)
    if not updated and not remove_ids:
        return
    before = queue.get_summary()["persist_errors"]
    with signals_deferred():
        try:
            queue.update(updated, remove_ids=remove_ids)
        except DLQCorruptError as exc:
            raise CLIError(f"corrupt DLQ: {exc.path}, line {exc.line}: {exc.detail}; nothing "
                           "was changed", EXIT_DLQ_UNREADABLE) from None
    if queue.get_summary()["persist_errors"] > before:
        raise CLIError(
            f"could not rewrite {os.path.join(queue.policy.path, JOURNAL_FILE_NAME)} "
            "(see the log line above); the DLQ on disk was not changed",
            EXIT_DLQ_UNREADABLE,
        )
    queue.close()
