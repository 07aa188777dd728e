"""Reading a queue's entries: the filter and the summary, as plain functions of entries.

Both queues (and the manager process of a shared one) answer ``filter()`` and
``get_summary()`` with these, so the two have one definition.
"""

from __future__ import annotations

import collections
import datetime
from typing import Any, Dict, Iterable, List, Sequence, Union

from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.signature import top_signatures

#: How many of the most common error messages a summary lists.
TOP_MESSAGES = 5
#: How many of the most common failure signatures a summary lists.
TOP_SIGNATURES = 10
#: The ``functions`` key of an entry that records no function.
UNKNOWN_FUNCTION = "<unknown>"

TimeBound = Union[float, int, datetime.datetime, None]


def select_entries(
    entries: Iterable[DLQEntry],
    error_type: str | None,
    reason: str | None,
    since: float | None,
    until: float | None,
) -> List[DLQEntry]:
    """The entries matching every given condition, in order (``since``/``until`` inclusive).

    ``error_type`` matches the short or the module-qualified type name.
    """
    out = []
    for entry in entries:
        if error_type is not None and error_type not in (entry.error_type, entry.error_qualname):
            continue
        if reason is not None and entry.reason != reason:
            continue
        if since is not None and entry.timestamp < since:
            continue
        if until is not None and entry.timestamp > until:
            continue
        out.append(entry)
    return out


def summarize(
    entries: Sequence[Any], *, pruned: int, persist_errors: int, corrupt_skipped: int
) -> Dict[str, Any]:
    """Counts by error type, reason and function, retry average, time span, top messages,
    top signatures (each with one example) and health.

    ``entries``: :class:`DLQEntry` objects, or anything with their error fields,
    ``function`` and ``signature`` (the rows of :mod:`amorsize.dlq.scan`).
    """
    error_types = collections.Counter(e.error_type for e in entries)
    reasons = collections.Counter(e.reason for e in entries)
    messages = collections.Counter(e.error_message for e in entries)
    stamps = [e.timestamp for e in entries]
    return {
        "total_entries": len(entries),
        "error_types": dict(error_types),
        "reasons": dict(reasons),
        "avg_retry_count": (sum(e.retry_count for e in entries) / len(entries)) if entries else 0.0,
        "oldest_timestamp": min(stamps) if stamps else None,
        "newest_timestamp": max(stamps) if stamps else None,
        "top_messages": messages.most_common(TOP_MESSAGES),
        "signatures": top_signatures(entries, TOP_SIGNATURES),
        "functions": dict(collections.Counter(e.function or UNKNOWN_FUNCTION for e in entries)),
        "pruned": pruned,
        "persist_errors": persist_errors,
        "corrupt_skipped": corrupt_skipped,
    }
