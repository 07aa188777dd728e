"""replay_failed_items: run a DLQ's items again once the cause is fixed."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, List, Tuple

from amorsize.dlq.entry import DLQEntry, error_message, format_traceback, qualified_type_name
from amorsize.errors import InvalidTypeError, PickleNotAllowedError
from amorsize.serialization import PickledPayload


def retried_entry(entry: DLQEntry, error: BaseException, *, include_traceback: bool = True) -> DLQEntry:
    """``entry`` after one more failed attempt: new error fields, ``retry_count + 1``."""
    kind = type(error)
    metadata = dict(entry.metadata)
    metadata["last_replay_at"] = time.time()
    return replace(
        entry,
        error_type=kind.__name__,
        error_qualname=qualified_type_name(kind),
        error_message=error_message(error),
        traceback=format_traceback(error) if include_traceback else None,
        retry_count=entry.retry_count + 1,
        metadata=metadata,
        reason="exception",
    )


def is_pickle_locked(entry: DLQEntry) -> bool:
    """Whether ``entry`` holds a pickled item or metadata that was not loaded (no allow_pickle)."""
    return isinstance(entry.item, PickledPayload) or isinstance(entry.metadata, PickledPayload)


def replay_failed_items(
    dlq: Any, func: Callable[[Any], Any], clear_on_success: bool = True
) -> Tuple[List[Any], List[DLQEntry]]:
    """Call ``func`` on every item in ``dlq``, serially, in DLQ order.

    Items that succeed leave the queue (unless ``clear_on_success`` is False);
    items that fail again stay, with ``retry_count + 1`` and their new error.
    Entries added to the queue while the replay runs are left untouched.
    Works with a :class:`DeadLetterQueue` and a :class:`SharedDeadLetterQueue`.

    Returns:
        ``(results, still_failed)``: results of the recovered items in DLQ order,
        and the updated entries of the items that failed again.

    Raises:
        PickleNotAllowedError: an item is stored pickled and the policy does not allow pickle.
    """
    if not callable(func):
        raise InvalidTypeError(f"func={func!r} is not valid; expected a callable")
    snapshot = dlq.get_entries()
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
    for entry in snapshot:
        try:
            value = func(entry.item)
        except Exception as exc:
            still_failed.append(retried_entry(entry, exc, include_traceback=include_traceback))
        else:
            results.append(value)
            recovered.append(entry.entry_id)
    dlq.update(still_failed, remove_ids=recovered if clear_on_success else ())
    return results, still_failed
