"""Failure routing: where a failed item goes, and when crashes stop the run.

Each failure arrives as a DLQ entry (built in the worker for an item error, in
the parent for a lost or rejected item) with a :class:`~amorsize.Failure`
stand-in at its position. It goes to the DLQ (one batch per chunk), to an
``on_failure`` callable, or, with ``on_failure="raise"``, stops the run:

* an item error re-raises the user's own exception when the worker could ship
  it, with the worker's traceback text as its ``__cause__`` (as
  ``concurrent.futures`` does); an exception that cannot be rebuilt in the
  parent becomes a ``TaskFailedError`` carrying its type name, message and text;
* a crash, a timeout, an unpicklable result or an open circuit is a
  ``TaskFailedError`` naming that reason.

The crash budget stops a crash loop: more worker deaths than ``max_crashes``
(default ``CRASH_BUDGET_BASE`` plus ``CRASH_BUDGET_FRACTION`` of the items
finished so far) raise ``CrashLoopError``, after the DLQ is flushed.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional

from amorsize.backends import ChunkLost, ChunkTask
from amorsize.dlq.entry import DLQEntry
from amorsize.errors import (
    CrashLoopError,
    DLQPersistError,
    ItemTimeoutError,
    TaskFailedError,
    WorkerCrashedError,
)
from amorsize.failure import hostname
from amorsize.run.options import RunOptions
from amorsize.run.resume import Resume
from amorsize.serialization import pack_for_transport

logger = logging.getLogger("amorsize")

#: Crash-loop guard default: stop after this many worker crashes, plus
#: ``CRASH_BUDGET_FRACTION`` of the items finished so far.
CRASH_BUDGET_BASE = 10
CRASH_BUDGET_FRACTION = 0.01


def rebuilt_error(entry: DLQEntry, error: Optional[BaseException]) -> BaseException:
    """What ``on_failure="raise"`` raises for ``entry``; ``error`` is its shipped exception."""
    if error is None or entry.reason != "exception" or isinstance(error, StopIteration):
        # StopIteration cannot leave a generator as itself (PEP 479).
        return TaskFailedError(
            entry.error_type, entry.error_message, entry.traceback, entry.item, entry.reason
        )
    return error  # from a worker process, its traceback text there is its __cause__


class FailureRouter:
    """Routes one run's failures and keeps its failure and crash counts."""

    def __init__(self, options: RunOptions, resume: Resume) -> None:
        self.on_failure = options.on_failure
        self.dlq = options.dlq
        self.max_crashes = options.max_crashes
        self.resume = resume
        self.failed = 0
        self.crashes = 0

    def route(
        self, entries: List[DLQEntry], values: List[Any], start: int,
        error: Optional[BaseException] = None,
    ) -> None:
        """Send failures where the run asked; ``values`` (from ``start``) hold their stand-ins.

        ``error`` is the exception object of ``entries[0]``, when it was shipped.
        """
        self.failed += len(entries)
        if self.on_failure == "raise":
            raise rebuilt_error(entries[0], error)
        entries = self.resume.fresh(entries, values, start)
        if self.dlq is not None and entries:
            self.dlq.extend(entries)
        if callable(self.on_failure):
            for entry in entries:
                self.on_failure(entry)

    def count_crash(self, done: int) -> None:
        """Count a worker death; raise CrashLoopError once the budget is spent."""
        self.crashes += 1
        budget = self.max_crashes
        if budget is None:
            budget = CRASH_BUDGET_BASE + int(CRASH_BUDGET_FRACTION * done)
        if self.crashes > budget:
            self.flush()
            raise CrashLoopError(
                f"{self.crashes} worker crashes exceed the crash budget of {budget} "
                f"(max_crashes={self.max_crashes}); stopping the run. {done} items "
                f"finished, {self.failed} of them failed and are in the DLQ; items not yet "
                "run were not started. A function that crashes its process on most items "
                "(native code, memory) is the likely cause."
            )

    def flush(self) -> None:
        flush = getattr(self.dlq, "flush", None)
        if flush is None:
            return
        try:
            flush()
        except DLQPersistError as exc:
            # The caller is told at the end of the run: the error with "raise", else a
            # WARNING naming the rescue file (the results are still returned).
            if getattr(getattr(self.dlq, "policy", None), "on_persist_error", "warn") == "raise":
                raise
            logger.warning("execute(): the DLQ could not persist every failure: %s", exc)


def lost_entry(task: ChunkTask, position: int, event: ChunkLost, function_name: str) -> DLQEntry:
    """The DLQ entry of the item a lost chunk was running (its worker died or overran)."""
    detail = dict(event.detail)
    item = task.items[position]
    if event.reason == "unpicklable_item":  # the pickling error itself, and the item's repr
        error: BaseException = detail.pop("error")
        item = pack_for_transport(item)
    elif event.reason == "timeout":
        fate = (f"its thread ({detail.get('thread')}) was abandoned" if detail.get("abandoned")
                else f"its worker ({_known(detail, 'pid', 'pid')}) was terminated")
        error = ItemTimeoutError(
            f"the item ran longer than timeout={detail.get('timeout_seconds')}s; {fate}"
        )
    else:
        error = WorkerCrashedError(
            f"{detail.get('cause', 'the worker died')} while running this item ({_where(detail)})"
        )
    metadata = detail
    metadata.update(index=task.start + position, function=function_name, host=hostname())
    return DLQEntry.from_exception(
        item, error, metadata=metadata, reason=event.reason, include_traceback=False,
    )


def _known(detail: dict, key: str, label: str) -> str:
    value = detail.get(key)
    return f"{label} unknown" if value is None else f"{label} {value}"


def _where(detail: dict) -> str:
    """Which worker died: its address (remote backends), last known pid and exit code."""
    where = [_known(detail, "pid", "pid"), _known(detail, "exitcode", "exit code")]
    if detail.get("worker"):
        where.insert(0, f"worker {detail['worker']}")
    return ", ".join(where)
