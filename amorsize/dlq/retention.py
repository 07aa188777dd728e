"""Retention by age: which entries ``DLQPolicy(max_age_seconds=...)`` has expired.

An entry's age counts from its first failure (``metadata["first_failure_at"]``
for a deduplicated entry, else ``timestamp``), as SQS counts from the first
enqueue. The queue drops expired entries on open (a full scan) and on add (from
the oldest end only, so an add stays O(1) amortized), through its one prune
path, the same one ``max_entries`` uses; each drop is logged as a WARNING with
the count (at most one line per :data:`RETENTION_LOG_INTERVAL_SECONDS`, carrying
the count since the previous line).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, List, Mapping

logger = logging.getLogger("amorsize.dlq")

#: The most often a queue logs its age-based drops (the count is carried over).
RETENTION_LOG_INTERVAL_SECONDS = 60.0


def first_failure(entry: Any) -> float:
    """When ``entry``'s item first failed (POSIX time)."""
    meta = entry.metadata if isinstance(entry.metadata, dict) else {}
    first = meta.get("first_failure_at")
    return float(first) if isinstance(first, (int, float)) else float(entry.timestamp)


def expired(entries: Mapping[str, Any], max_age: float, now: float, *,
            oldest_only: bool = False) -> List[str]:
    """Ids of ``entries`` first failed more than ``max_age`` seconds before ``now``.

    With ``oldest_only`` the scan stops at the first entry (in insertion order) that
    has not expired: what an add needs, since entries arrive oldest first.
    """
    cutoff = now - max_age
    out: List[str] = []
    for entry_id, entry in entries.items():
        if first_failure(entry) < cutoff:
            out.append(entry_id)
        elif oldest_only:
            break
    return out


class RetentionLog:
    """The WARNING lines of age-based drops, rate-limited, never silent."""

    def __init__(self, directory: str, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory, self.max_age, self.clock = directory, max_age, clock
        self._unlogged = 0
        self._last: float | None = None

    def dropped(self, count: int) -> None:
        if not count:
            return
        self._unlogged += count
        now = self.clock()
        if self._last is not None and now - self._last < RETENTION_LOG_INTERVAL_SECONDS:
            return
        logger.warning(
            "DLQ %r: dropped %d entries whose first failure is older than max_age_seconds=%g",
            self.directory, self._unlogged, self.max_age,
        )
        self._unlogged, self._last = 0, now
