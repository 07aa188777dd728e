"""replay_failed_items: run a DLQ's items again once the cause is fixed.

Replay runs work, so it lives above the store: it may import the executor, and
:mod:`amorsize.dlq` never imports it. Every item runs under
:func:`amorsize.retry.call_with_retry` (serially) or :func:`amorsize.execute`
(in worker processes); a failure record is built by
:func:`amorsize.failure.failure_entry` and folded into the entry it replays by
:func:`failed_like`.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Tuple

from amorsize._aio import as_sync
from amorsize._validate import check_callable, check_type
from amorsize.dlq import dedupe
from amorsize.dlq.base import DeadLetterQueueBase
from amorsize.dlq.dedupe import KEY_FIELD
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.records import STORED_METADATA_KEY
from amorsize.errors import InvalidTypeError, PickleNotAllowedError
from amorsize.executor import execute
from amorsize.failure import failure_entry, function_name
from amorsize.retry import RetryPolicy, call_with_retry
from amorsize.serialization import PickledPayload

logger = logging.getLogger("amorsize.replay")


class _SameFunction:
    """The default of ``function=``: the qualified name of the replayed ``func``."""

    def __repr__(self) -> str:
        return "SAME_FUNCTION"


#: ``replay_failed_items(function=SAME_FUNCTION)`` (the default): only entries recorded
#: for a function with the replayed function's qualified name.
SAME_FUNCTION: Any = _SameFunction()


def function_matches(recorded: str | None, wanted: str, qualname: str | None = None) -> bool:
    """Whether an entry recorded for ``recorded`` belongs to the function named ``wanted``.

    An entry that records no function matches (nothing says it is another's). A
    function recorded in ``__main__`` (a script) matches the same ``qualname`` under
    its module's real name, as when the script's module is given as ``--func``.
    """
    if recorded is None or recorded == wanted:
        return True
    return qualname is not None and recorded == f"__main__.{qualname}"


def split_by_function(
    entries: List[DLQEntry], wanted: str, qualname: str | None = None
) -> Tuple[List[DLQEntry], Dict[str, int]]:
    """``(kept, skipped)``: the entries of ``wanted``, and counts of the others by function."""
    kept: List[DLQEntry] = []
    skipped: Dict[str, int] = collections.Counter()
    for entry in entries:
        recorded = entry.function
        if function_matches(recorded, wanted, qualname):
            kept.append(entry)
        else:
            skipped[str(recorded)] += 1
    return kept, dict(skipped)


def describe_skipped(skipped: Dict[str, int]) -> str:
    """``"3 entries recorded for other functions (__main__.f: 2, x.g: 1)"``."""
    ordered = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = ", ".join(f"{name}: {count}" for name, count in ordered)
    return f"{sum(skipped.values())} entries recorded for other functions ({parts})"


def _for_function(snapshot: List[DLQEntry], func: Callable[[Any], Any], function: Any) -> List[DLQEntry]:
    if function is None:
        return snapshot
    if function is SAME_FUNCTION:
        wanted, qualname = function_name(func), getattr(func, "__qualname__", None)
    else:
        wanted, qualname = check_type("function", function, str, "a qualified name or None"), None
    kept, skipped = split_by_function(snapshot, wanted, qualname)
    if skipped:
        logger.warning("replay of %s skipped %s; pass function=None to replay them too",
                       wanted, describe_skipped(skipped))
    return kept


def failed_again(
    entry: DLQEntry,
    *,
    error_type: str,
    error_qualname: str | None,
    error_message: str,
    traceback: str | None,
    reason: str = "exception",
    **metadata: Any,
) -> DLQEntry:
    """``entry`` after a replay attempt that failed: the new error, ``retry_count + 1``.

    Extra keyword arguments are recorded in the entry's metadata.
    """
    merged = dict(entry.metadata)
    merged["last_replay_at"] = time.time()
    merged.update(metadata)
    if KEY_FIELD in merged:  # a deduplicated entry sums attempts and keeps its error history
        attempts = metadata.get("last_replay_attempts")
        failure = DLQEntry(None, error_type, error_message, merged["last_replay_at"], traceback,
                           metadata={"attempts": attempts if isinstance(attempts, int) else 1},
                           reason=reason, error_qualname=error_qualname)
        return dedupe.merge(replace(entry, metadata=merged), failure)
    return replace(
        entry,
        error_type=error_type,
        error_qualname=error_qualname,
        error_message=error_message,
        traceback=traceback,
        retry_count=entry.retry_count + 1,
        metadata=merged,
        reason=reason,
    )


def failed_like(entry: DLQEntry, failure: DLQEntry, **metadata: Any) -> DLQEntry:
    """``entry`` after a replay attempt that failed as ``failure`` (a fresh record) says."""
    if isinstance(entry.metadata, dict) and KEY_FIELD in entry.metadata:
        replayed = replace(entry, metadata={**entry.metadata, "last_replay_at": time.time(), **metadata})
        return dedupe.merge(replayed, replace(failure, timestamp=time.time()))
    return failed_again(
        entry, error_type=failure.error_type, error_qualname=failure.error_qualname,
        error_message=failure.error_message, traceback=failure.traceback, reason=failure.reason,
        **metadata,
    )


def is_pickle_locked(entry: DLQEntry) -> bool:
    """Whether ``entry`` holds a pickled item or metadata that was not loaded (no allow_pickle)."""
    stored = entry.metadata.get(STORED_METADATA_KEY) if isinstance(entry.metadata, dict) else None
    return isinstance(entry.item, PickledPayload) or isinstance(
        stored if stored is not None else entry.metadata, PickledPayload
    )


def refuse_pickle_locked(entries: List[DLQEntry]) -> None:
    """Raise :class:`PickleNotAllowedError` if an entry's item or metadata was not loaded.

    Checked before anything runs: a pickled item cannot be passed to func, and an entry
    whose metadata is pickled cannot be updated (:func:`failed_again` copies the dict).
    """
    locked = [e.entry_id for e in entries if is_pickle_locked(e)]
    if locked:
        raise PickleNotAllowedError(
            f"{len(locked)} DLQ entries have their item or metadata stored as cloudpickle bytes "
            f"that were not loaded (first entry_id: {locked[0]}); open the queue with "
            "DLQPolicy(allow_pickle=True) to replay them"
        )


Outcomes = Tuple[List[Any], List[str], List[DLQEntry]]  # results, recovered ids, still failed


def _replay_serially(
    snapshot: List[DLQEntry], func: Callable[[Any], Any], retry: RetryPolicy | None,
    include_traceback: bool,
) -> Outcomes:
    results: List[Any] = []
    recovered: List[str] = []
    still_failed: List[DLQEntry] = []
    name = function_name(func)
    func = as_sync(func)  # an async def function: each item on this thread's event loop
    for entry in snapshot:
        outcome = call_with_retry(func, entry.item, retry)
        if outcome.ok:
            results.append(outcome.value)
            recovered.append(entry.entry_id)
        else:
            assert outcome.error is not None
            failure = failure_entry(None, outcome.error, attempts=outcome.attempts, function=name,
                                    include_traceback=include_traceback)
            still_failed.append(failed_like(entry, failure))
    return results, recovered, still_failed


def _replay_in_workers(
    snapshot: List[DLQEntry], func: Callable[[Any], Any], retry: RetryPolicy | None,
    n_jobs: int | None, backend: Any = None,
) -> Outcomes:
    failures: Dict[int, DLQEntry] = {}
    values = execute(
        func, [e.item for e in snapshot], n_jobs=n_jobs, retry=retry, dry_run=False, backend=backend,
        on_failure=lambda failure: failures.__setitem__(failure.metadata["index"], failure),
    )
    results: List[Any] = []
    recovered: List[str] = []
    still_failed: List[DLQEntry] = []
    for index, (entry, value) in enumerate(zip(snapshot, values)):
        if index in failures:
            still_failed.append(failed_like(entry, failures[index]))
        else:
            results.append(value)
            recovered.append(entry.entry_id)
    return results, recovered, still_failed


def _check_arguments(func: Any, dlq: Any, retry: Any) -> None:
    check_callable("func", func)
    if not isinstance(dlq, DeadLetterQueueBase):
        raise InvalidTypeError(
            f"dlq={dlq!r} is not valid; expected a DeadLetterQueue or SharedDeadLetterQueue"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise InvalidTypeError(f"retry={retry!r} is not valid; expected a RetryPolicy or None")


def replay_failed_items(
    dlq: DeadLetterQueueBase,
    func: Callable[[Any], Any],
    clear_on_success: bool = True,
    *,
    n_jobs: int | None = 1,
    retry: RetryPolicy | None = None,
    entries: List[DLQEntry] | None = None,
    backend: Any = None,
    signature: str | None = None,
    function: Any = SAME_FUNCTION,
) -> Tuple[List[Any], List[DLQEntry]]:
    """Call ``func`` on every item in ``dlq`` (or on ``entries`` of it), in DLQ order.

    Items that succeed leave the queue (unless ``clear_on_success`` is False);
    items that fail again stay, with ``retry_count + 1`` and their new error.
    Entries added to the queue while the replay runs are left untouched.
    Works with a :class:`DeadLetterQueue` and a :class:`SharedDeadLetterQueue`.

    With ``n_jobs`` other than 1, or a ``backend``, the items run through
    :func:`amorsize.execute` (worker processes by default: a crash or timeout then
    fails one item, not the replay). ``func`` may be an ``async def`` function.

    Args:
        n_jobs: 1 to replay serially in this process; None or > 1 for worker processes.
        retry: a RetryPolicy applied to each replayed item.
        entries: replay only these entries (default: all of them).
        backend: as for :func:`amorsize.execute` (``"threads"`` for I/O-bound work).
        signature: replay only the entries with this :attr:`DLQEntry.signature`.
        function: replay only the entries recorded (``metadata["function"]``) for the
            function with this qualified name; by default ``func``'s own (entries that
            record none are replayed). The skipped ones are counted in a WARNING log line.
            ``None`` replays every entry.

    Returns:
        ``(results, still_failed)``: results of the recovered items in DLQ order,
        and the updated entries of the items that failed again.

    Raises:
        InvalidTypeError: ``func``, ``dlq`` or ``retry`` is not of an accepted type.
        PickleNotAllowedError: an item is stored pickled and the policy does not allow pickle.
    """
    _check_arguments(func, dlq, retry)
    snapshot = dlq.get_entries() if entries is None else list(entries)
    if signature is not None:
        snapshot = [e for e in snapshot if e.signature == signature]
    snapshot = _for_function(snapshot, func, function)
    refuse_pickle_locked(snapshot)
    if n_jobs == 1 and backend is None:
        outcomes = _replay_serially(snapshot, func, retry, dlq.policy.include_traceback)
    else:
        outcomes = _replay_in_workers(snapshot, func, retry, n_jobs, backend)
    results, recovered, still_failed = outcomes
    dlq.update(still_failed, remove_ids=recovered if clear_on_success else ())
    return results, still_failed
