"""``amorsize dlq replay``: run the DLQ's items again with a fixed function.

```
 select entries ──► _run_items(func, items) ──► outcomes (a prefix when cancelled)
 (filters, lock)      serial: RetryPolicy.run,        │
                        token bucket (--rate)          ▼
                      parallel: amorsize.execute  commit: ONE dlq.update(still_failed,
                                                          remove_ids=recovered)
```

Cancelling: the first Ctrl-C (or SIGTERM) lets the item in progress finish and
starts nothing new; the second stops at once (that item's outcome is lost, so it
stays in the DLQ untouched). Either way the outcomes collected so far are
committed, the rest is untouched, and the exit code is 130 (143 for SIGTERM).
Only one replay or purge runs on a directory at a time (``.replay.lock``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import amorsize
from amorsize import replay as replay_core
from amorsize._aio import as_sync
from amorsize.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STILL_FAILING,
    EXIT_USAGE,
    CLIError,
    commit,
    exclusive_lock,
    open_queue,
    refuse_corrupt,
    require_directory,
    signals_deferred,
)
from amorsize.cli.filters import select
from amorsize.cli.render import (
    REPORT_ROWS,
    format_table,
    id_width,
    item_repr,
    more_rows,
    preview_table,
    truncate,
)
from amorsize.cli.replay_scope import for_function, with_progress
from amorsize.dlq.entry import DLQEntry
from amorsize.failure import Failure, failure_entry, function_name, is_failure
from amorsize.replay import is_pickle_locked
from amorsize.retry import RetryPolicy, call_with_retry

Outcome = Tuple[bool, Any]  # (True, value) or (False, ErrorInfo)


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """Why an item failed again: the fields its DLQ entry gets (no exception object)."""

    error_type: str
    error_qualname: str | None
    error_message: str
    traceback: str | None
    reason: str = "exception"
    attempts: int = 1

    @classmethod
    def from_exception(cls, func: Callable[[Any], Any], error: BaseException, attempts: int) -> ErrorInfo:
        """From an error raised in this process (the record ``failure_entry`` builds)."""
        return cls.from_entry(failure_entry(None, error, attempts=attempts, function=function_name(func)))

    @classmethod
    def from_entry(cls, entry: DLQEntry) -> ErrorInfo:
        """From the entry ``execute(on_failure=...)`` hands over."""
        attempts = entry.retry_count + 1
        if isinstance(entry.metadata, dict) and isinstance(entry.metadata.get("attempts"), int):
            attempts = entry.metadata["attempts"]
        return cls(entry.error_type, entry.error_qualname, entry.error_message, entry.traceback,
                   entry.reason, attempts)

    @classmethod
    def from_failure(cls, failure: Failure) -> ErrorInfo:
        return cls(failure.error_type, None, failure.error_message, None, failure.reason)


def failed_again(entry: DLQEntry, info: ErrorInfo) -> DLQEntry:
    """``entry`` after a failed replay: the new error, ``retry_count + 1``."""
    return replay_core.failed_again(
        entry, error_type=info.error_type, error_qualname=info.error_qualname,
        error_message=info.error_message, traceback=info.traceback, reason=info.reason,
        last_replay_attempts=info.attempts,
    )


# --- resolving --func ------------------------------------------------------------


def resolve_function(spec: str) -> Callable[[Any], Any]:
    """``module:attr.path`` to the callable, importing ``module`` with the cwd on sys.path.

    Raises:
        CLIError: a malformed spec, a failed import, a missing attribute or a non-callable.
    """
    module_name, _, path = spec.partition(":")
    if not module_name or not path or any(not part for part in path.split(".")):
        raise CLIError(f"--func {spec!r}: expected module:function, like mypkg.etl:parse_record")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does, so a module in the project directory works
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CLIError(f"--func {spec!r}: no module named {exc.name!r}",
                           hint=f"searched the current directory ({cwd}) and sys.path; "
                           "run from the project directory or set PYTHONPATH") from None
        raise CLIError(f"--func {spec!r}: importing {module_name} failed",
                       hint=traceback.format_exc().rstrip()) from None
    except (Exception, SystemExit):
        raise CLIError(f"--func {spec!r}: importing {module_name} failed",
                       hint=traceback.format_exc().rstrip()) from None
    walked = module_name
    for part in path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CLIError(f"--func {spec!r}: {walked} has no attribute {part!r}") from None
        walked += ("." if walked != module_name else ":") + part
    if not callable(target):
        raise CLIError(f"--func {spec!r} is a {type(target).__name__}, not a callable")
    return target


# --- running the items ---------------------------------------------------------------


class TokenBucket:
    """Allow ``rate`` starts per second on average, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.rate, self.burst, self.clock, self.sleep = rate, burst, clock, sleep
        self.tokens = burst
        self.last = clock()

    def acquire(self) -> None:
        """Block until one start is allowed, and take it."""
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            self.sleep((1.0 - self.tokens) / self.rate)


def _never() -> bool:
    return False


def _run_items(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    n_jobs: int,
    retries: int,
    rate: float | None,
    stop: Callable[[], bool] = _never,
    backend: str | None = None,
    timeout: float | None = None,
) -> Iterator[Outcome]:
    """THE SEAM: run ``func`` over ``items``; yield ``(True, value)`` or ``(False, ErrorInfo)``.

    The i-th outcome belongs to ``items[i]``. Nothing new starts once ``stop()`` is
    true, so a consumer that stops early holds a prefix. Serial, in this process,
    with ``n_jobs == 1`` (and no ``backend``) or with ``rate``; an ``async def`` ``func``
    then runs each item on this thread's event loop. A ``timeout`` runs items in worker
    processes.
    """
    if (n_jobs != 1 or backend is not None or timeout is not None) and rate is None:
        yield from _run_parallel(func, items, n_jobs=n_jobs, retries=retries, stop=stop,
                                 backend=backend, timeout=timeout)
        return
    func = as_sync(func)
    policy = RetryPolicy(max_retries=retries)
    bucket = TokenBucket(rate) if rate else None
    for item in items:
        if stop():
            return
        if bucket is not None:
            bucket.acquire()
            if stop():
                return
        try:
            outcome = call_with_retry(func, item, policy)
        except SystemExit as exc:  # a func calling sys.exit() fails its item, not the replay
            yield False, ErrorInfo.from_exception(func, exc, 1)
            continue
        if outcome.ok:
            yield True, outcome.value
        else:
            assert outcome.error is not None
            yield False, ErrorInfo.from_exception(func, outcome.error, outcome.attempts)


class _FailureSink:
    """``on_failure`` for execute(): keeps each failure's entry by id (called in the parent)."""

    def __init__(self) -> None:
        self.entries: Dict[str | None, DLQEntry] = {}

    def __call__(self, entry: DLQEntry) -> None:
        self.entries[entry.entry_id] = entry


def _until_stopped(items: Iterable[Any], stop: Callable[[], bool]) -> Iterator[Any]:
    for item in items:
        if stop():
            return
        yield item


def _run_parallel(
    func: Callable[[Any], Any], items: Sequence[Any], *, n_jobs: int, retries: int,
    stop: Callable[[], bool], backend: str | None = None, timeout: float | None = None,
) -> Iterator[Outcome]:
    """Through ``amorsize.imap`` (ordered): results in input order, a Failure per failed item.

    The input is a lazy iterator that ends when ``stop()`` turns true, so the run
    finishes what it started; results stream in order, so an interrupted replay still
    commits the prefix it finished. No dry run: every call happens in a worker.
    """
    sink = _FailureSink()
    results = amorsize.imap(
        func, _until_stopped(items, stop), n_jobs=n_jobs,
        retry=RetryPolicy(max_retries=retries), dlq=None, on_failure=sink, dry_run=False,
        backend=backend, timeout=timeout,
    )
    for value in results:
        if is_failure(value):
            entry = sink.entries.get(value.entry_id)
            yield False, ErrorInfo.from_entry(entry) if entry else ErrorInfo.from_failure(value)
        else:
            yield True, value


# --- the command ---------------------------------------------------------------------


class _Cancel:
    """First SIGINT/SIGTERM: finish the current item, start no more. Second: stop now."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: Dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        os.write(2, b"amorsize: interrupted: finishing the current item, then saving progress "
                    b"(press Ctrl-C again to stop at once)\n")

    def is_set(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> _Cancel:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _refuse_pickled(entries: List[DLQEntry], directory: str) -> None:
    locked = [e for e in entries if is_pickle_locked(e)]
    if locked:
        raise CLIError(
            f"{len(locked)} of the selected entries hold items or metadata stored as cloudpickle "
            f"bytes, which are not loaded without --allow-pickle (first: {locked[0].entry_id}); "
            "nothing was replayed or changed",
            EXIT_USAGE,
            hint=f"if you trust {directory}, run again with --allow-pickle",
        )


def _settings(args: argparse.Namespace) -> str:
    rate = f", rate={args.rate:g}/s" if args.rate else ""
    timeout = f", timeout={args.timeout:g}s" if getattr(args, "timeout", None) else ""
    return f"{args.func} (n_jobs={args.n_jobs}, retries={args.retries}{rate}{timeout})"


def cmd_replay(args: argparse.Namespace) -> int:
    require_directory(args.dir)
    func = resolve_function(args.func)
    if args.dry_run:
        queue = open_queue(args)
        entries = for_function(args, func, select(queue, args))
        _refuse_pickled(entries, args.dir)
        print(f"would replay {len(entries)} of {len(queue)} entries with {_settings(args)}:")
        if entries:
            print(preview_table(entries, all_ids=[e.entry_id for e in queue.get_entries()]))
        print("dry run: nothing was called or changed")
        return EXIT_OK
    with exclusive_lock(args.dir, "replay"):
        queue = open_queue(args)
        refuse_corrupt(queue, "replay")
        entries = for_function(args, func, select(queue, args))
        _refuse_pickled(entries, args.dir)
        if not entries:
            print(f"nothing to replay: no entries match ({len(queue)} in the DLQ)")
            return EXIT_OK
        all_ids = [e.entry_id for e in queue.get_entries()]
        outcomes: List[Outcome] = []
        with _Cancel() as cancel:
            try:
                # No break on cancel here: _run_items starts nothing new once cancel is set, and
                # every outcome it still yields is an item that ran, so it must be committed.
                run = _run_items(func, [e.item for e in entries], n_jobs=args.n_jobs,
                                 retries=args.retries, rate=args.rate, stop=cancel.is_set,
                                 backend=getattr(args, "backend", None), timeout=args.timeout)
                for outcome in with_progress(run, len(entries)):
                    outcomes.append(outcome)
            except KeyboardInterrupt:
                cancel.signum = cancel.signum or signal.SIGINT
            with signals_deferred():  # from here on, a Ctrl-C waits until the commit is done
                done = entries[: len(outcomes)]
                recovered = [e for e, (ok, _) in zip(done, outcomes) if ok]
                still = [failed_again(e, info) for e, (ok, info) in zip(done, outcomes) if not ok]
                commit(queue, still, [e.entry_id for e in recovered])
        _report(args, entries, recovered, still, all_ids, cancel.signum)
    if cancel.signum is not None:
        return EXIT_INTERRUPTED - signal.SIGINT + int(cancel.signum)  # 130 for SIGINT, 143 for SIGTERM
    return EXIT_STILL_FAILING if still else EXIT_OK


def _report(args: argparse.Namespace, selected: List[DLQEntry], recovered: List[DLQEntry],
            still: List[DLQEntry], all_ids: List[str], signum: int | None) -> None:
    done = len(recovered) + len(still)
    print(f"replayed {done} of {len(selected)} selected entries with {_settings(args)}")
    if signum is not None:
        print(f"interrupted: {len(selected) - done} entries were not replayed and are unchanged")
    print(f"recovered:     {len(recovered)} (removed from the DLQ)")
    print(f"still failing: {len(still)} (kept with retry_count + 1 and the new error)")
    width = id_width(all_ids)
    if still:
        print("\nSTILL FAILING")
        rows = [[e.entry_id[:width], str(e.retry_count), truncate(e.error_type, 30),
                 truncate(e.error_message, 200), item_repr(e.item, limit=200)]
                for e in still[:REPORT_ROWS]]
        print(format_table(["ID", "RETRIES", "ERROR", "MESSAGE", "ITEM"], rows, flexible=[3, 4, 2]))
        if more_rows(len(still), REPORT_ROWS):
            print(more_rows(len(still), REPORT_ROWS))
    if recovered:
        print("\nRECOVERED")
        rows = [[e.entry_id[:width], item_repr(e.item, limit=200)] for e in recovered[:REPORT_ROWS]]
        print(format_table(["ID", "ITEM"], rows, flexible=[1]))
        if more_rows(len(recovered), REPORT_ROWS):
            print(more_rows(len(recovered), REPORT_ROWS))
