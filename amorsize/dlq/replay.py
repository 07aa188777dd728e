"""replay_failed_items: run a DLQ's items again once the cause is fixed."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from amorsize.dlq.entry import DLQEntry, error_message, format_traceback, qualified_type_name
from amorsize.dlq.journal import STORED_METADATA_KEY
from amorsize.errors import InvalidTypeError, PickleNotAllowedError
from amorsize.serialization import PickledPayload


def failed_again(
    entry: DLQEntry,
    *,
    error_type: str,
    error_qualname: Optional[str],
    error_message: str,
    traceback: Optional[str],
    reason: str = "exception",
    **metadata: Any,
) -> DLQEntry:
    """``entry`` after a replay attempt that failed: the new error, ``retry_count + 1``.

    Extra keyword arguments are recorded in the entry's metadata.
    """
    merged = dict(entry.metadata)
    merged["last_replay_at"] = time.time()
    merged.update(metadata)
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


def retried_entry(entry: DLQEntry, error: BaseException, *, include_traceback: bool = True) -> DLQEntry:
    """``entry`` after one more attempt failed with ``error``."""
    kind = type(error)
    return failed_again(
        entry, error_type=kind.__name__, error_qualname=qualified_type_name(kind),
        error_message=error_message(error),
        traceback=format_traceback(error) if include_traceback else None,
    )


def failed_like(entry: DLQEntry, failure: DLQEntry) -> DLQEntry:
    """``entry`` after a replay attempt that failed as ``failure`` (a fresh entry) records."""
    return failed_again(
        entry, error_type=failure.error_type, error_qualname=failure.error_qualname,
        error_message=failure.error_message, traceback=failure.traceback, reason=failure.reason,
    )


def is_pickle_locked(entry: DLQEntry) -> bool:
    """Whether ``entry`` holds a pickled item or metadata that was not loaded (no allow_pickle)."""
    stored = entry.metadata.get(STORED_METADATA_KEY) if isinstance(entry.metadata, dict) else None
    return isinstance(entry.item, PickledPayload) or isinstance(
        stored if stored is not None else entry.metadata, PickledPayload
    )


def replay_failed_items(
    dlq: Any,
    func: Callable[[Any], Any],
    clear_on_success: bool = True,
    *,
    n_jobs: int = 1,
    retry: Any = None,
    entries: Optional[List[DLQEntry]] = None,
) -> Tuple[List[Any], List[DLQEntry]]:
    """Call ``func`` on every item in ``dlq`` (or on ``entries`` of it), in DLQ order.

    Items that succeed leave the queue (unless ``clear_on_success`` is False);
    items that fail again stay, with ``retry_count + 1`` and their new error.
    Entries added to the queue while the replay runs are left untouched.
    Works with a :class:`DeadLetterQueue` and a :class:`SharedDeadLetterQueue`.

    With ``n_jobs`` other than 1 the items run through :func:`amorsize.execute` in
    worker processes (a crash or timeout then fails one item, not the replay).

    Args:
        n_jobs: 1 to replay serially in this process; None or > 1 for worker processes.
        retry: a RetryPolicy applied to each replayed item.
        entries: replay only these entries (default: all of them).

    Returns:
        ``(results, still_failed)``: results of the recovered items in DLQ order,
        and the updated entries of the items that failed again.

    Raises:
        InvalidTypeError: ``func``, ``dlq`` or ``retry`` is not of an accepted type.
        PickleNotAllowedError: an item is stored pickled and the policy does not allow pickle.
    """
    if not callable(func):
        raise InvalidTypeError(f"func={func!r} is not valid; expected a callable")
    if not all(callable(getattr(dlq, name, None)) for name in ("get_entries", "update")):
        raise InvalidTypeError(
            f"dlq={dlq!r} is not valid; expected a DeadLetterQueue or SharedDeadLetterQueue"
        )
    if retry is not None and (isinstance(retry, type) or not callable(getattr(retry, "run", None))):
        raise InvalidTypeError(f"retry={retry!r} is not valid; expected a RetryPolicy or None")
    snapshot = dlq.get_entries() if entries is None else list(entries)
    # Checked before anything runs: a pickled item cannot be passed to func, and an entry
    # whose metadata is pickled cannot be updated (retried_entry copies the metadata dict).
    locked = [e.entry_id for e in snapshot if is_pickle_locked(e)]
    if locked:
        raise PickleNotAllowedError(
            f"{len(locked)} DLQ entries have their item or metadata stored as cloudpickle bytes "
            f"that were not loaded (first entry_id: {locked[0]}); open the queue with "
            "DLQPolicy(allow_pickle=True) to replay them"
        )
    include_traceback = dlq.policy.include_traceback
    results: List[Any] = []
    recovered: List[str] = []
    still_failed: List[DLQEntry] = []
    if n_jobs == 1:
        for entry in snapshot:
            if retry is None:
                try:
                    value = func(entry.item)
                except Exception as exc:
                    still_failed.append(retried_entry(entry, exc, include_traceback=include_traceback))
                    continue
            else:
                outcome = retry.run(func, entry.item)
                if not outcome.ok:
                    still_failed.append(
                        retried_entry(entry, outcome.error, include_traceback=include_traceback)
                    )
                    continue
                value = outcome.value
            results.append(value)
            recovered.append(entry.entry_id)
    else:
        from amorsize.executor import execute

        failures: Dict[int, DLQEntry] = {}
        values = execute(
            func, [e.item for e in snapshot], n_jobs=n_jobs, retry=retry, dry_run=False,
            on_failure=lambda failure: failures.__setitem__(failure.metadata["index"], failure),
        )
        for index, (entry, value) in enumerate(zip(snapshot, values)):
            if index in failures:
                still_failed.append(failed_like(entry, failures[index]))
            else:
                results.append(value)
                recovered.append(entry.entry_id)
    dlq.update(still_failed, remove_ids=recovered if clear_on_success else ())
    return results, still_failed
