"""DeadLetterQueueBase: what every dead letter queue does, written once.

A store provides a few primitives; the public API (argument checks included) is
built on them here, so :class:`~amorsize.DeadLetterQueue` (in this process) and
:class:`~amorsize.SharedDeadLetterQueue` (in a manager process, through a proxy)
behave alike by construction:

* ``_store(entries)``: add checked entries (replacing any with the same id) as they are;
* ``_update(entries, remove_ids)``: replace ``entries`` and drop ``remove_ids`` at once,
  returning how many were dropped;
* ``_select(error_type, reason, since, until)``: the matching entries, times as POSIX;
* ``get_entries``, ``size``, ``get_summary``, ``clear``, ``save``, ``load``, ``flush``, ``close``.

Whatever runs work (``execute()``, replay) takes a ``DeadLetterQueueBase``.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, Dict, Iterable, List, Sequence, TypeVar, Union

from amorsize._validate import check_choice, check_timestamp, check_type, invalid_value
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.dlq.policy import DLQPolicy
from amorsize.dlq.summary import TimeBound

PathArg = Union[str, "os.PathLike[str]", None]
_Queue = TypeVar("_Queue", bound="DeadLetterQueueBase")


def checked_policy(policy: Any) -> DLQPolicy:
    """``policy``, or ``DLQPolicy()`` for None; anything else is refused."""
    check_type("policy", policy, DLQPolicy, "a DLQPolicy or None", optional=True)
    return DLQPolicy() if policy is None else policy


def _checked(entry: Any) -> DLQEntry:
    # The isinstance test first: extend() checks every entry of a run's failures.
    return entry if isinstance(entry, DLQEntry) else check_type("entry", entry, DLQEntry, "a DLQEntry")


class DeadLetterQueueBase(abc.ABC):
    """Keeps items that failed for good, with their errors, for inspection and replay."""

    policy: DLQPolicy

    # -- adding ---------------------------------------------------------------

    def add(
        self,
        item: Any,
        error: BaseException,
        retry_count: int = 0,
        metadata: Dict[str, Any] | None = None,
        *,
        reason: str = "exception",
    ) -> DLQEntry:
        """Record that ``item`` failed with ``error``. Never raises on a persistence failure.

        Returns:
            The new :class:`DLQEntry`.
        """
        entry = DLQEntry.from_exception(
            item, error, retry_count=retry_count, metadata=metadata,
            include_traceback=self.policy.include_traceback, reason=reason,
        )
        self._store((entry,))
        return entry

    def add_entry(self, entry: DLQEntry) -> DLQEntry:
        """Add a ready-made entry (an entry already present under its id is replaced)."""
        self.extend([entry])
        return entry

    def extend(self, entries: Iterable[DLQEntry]) -> int:
        """Add a batch of entries with one journal write. Returns how many were added.

        With ``policy.include_traceback`` False the entries' tracebacks are dropped.
        """
        batch = [_checked(e) for e in entries]
        if not self.policy.include_traceback:
            for entry in batch:
                entry.traceback = None
        if batch:
            self._store(batch)
        return len(batch)

    # -- reading --------------------------------------------------------------

    def filter(
        self,
        error_type: str | None = None,
        reason: str | None = None,
        since: TimeBound = None,
        until: TimeBound = None,
        predicate: Callable[[DLQEntry], bool] | None = None,
        *,
        signature: str | None = None,
    ) -> List[DLQEntry]:
        """Entries matching every given condition, in insertion order.

        ``error_type`` matches the short or the module-qualified type name;
        ``signature`` is an entry's :attr:`~DLQEntry.signature` (as in ``get_summary()``);
        ``since``/``until`` bound ``timestamp`` (inclusive), as POSIX time or datetime;
        ``predicate`` runs in the caller's process.
        """
        if reason is not None:
            check_choice("reason", reason, REASONS)
        low, high = check_timestamp("since", since), check_timestamp("until", until)
        if predicate is not None and not callable(predicate):
            raise invalid_value("predicate", predicate, "a callable taking a DLQEntry, or None")
        check_type("signature", signature, str, "a signature string or None", optional=True)
        selected = self._select(error_type, reason, low, high)
        if signature is not None:
            selected = [e for e in selected if e.signature == signature]
        return [e for e in selected if predicate(e)] if predicate is not None else selected

    def __len__(self) -> int:
        return self.size()

    @property
    def healthy(self) -> bool:
        """False while an acknowledged entry is only in memory (its write failed)."""
        return not self.get_summary().get("unpersisted", 0)

    # -- removing -------------------------------------------------------------

    def remove(self, entry_ids: Iterable[str]) -> int:
        """Remove the entries with these ids (and compact the journal). Returns how many."""
        return self.update(remove_ids=entry_ids)

    def update(self, entries: Iterable[DLQEntry] = (), remove_ids: Iterable[str] = ()) -> int:
        """Atomically replace ``entries`` (matched by ``entry_id``) and remove ``remove_ids``.

        One journal compaction covers both, so a crash leaves either the old or the new
        state. Entries not currently in the queue are added. Returns how many were removed.
        """
        if isinstance(remove_ids, str):
            raise invalid_value("remove_ids", remove_ids, "an iterable of entry ids, not a str")
        updated = [_checked(e) for e in entries]
        return self._update(updated, list(remove_ids))

    # -- lifetime -------------------------------------------------------------

    def __enter__(self: _Queue) -> _Queue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what each store provides -----------------------------------------------

    @abc.abstractmethod
    def _store(self, entries: Sequence[DLQEntry]) -> None:
        """Add checked ``entries``, replacing any with the same id."""

    @abc.abstractmethod
    def _update(self, entries: List[DLQEntry], remove_ids: List[str]) -> int:
        """Replace ``entries`` and drop ``remove_ids`` in one step; how many were dropped."""

    @abc.abstractmethod
    def _select(
        self, error_type: str | None, reason: str | None, since: float | None, until: float | None
    ) -> List[DLQEntry]:
        """The entries matching every given condition (checked; times as POSIX seconds)."""

    @abc.abstractmethod
    def get_entries(self) -> List[DLQEntry]:
        """A copy of the entries, in insertion order."""

    @abc.abstractmethod
    def size(self) -> int:
        """How many entries the queue holds."""

    @abc.abstractmethod
    def get_summary(self) -> Dict[str, Any]:
        """Counts by error type and reason, retry average, time span, top messages and health."""

    @abc.abstractmethod
    def clear(self) -> int:
        """Remove every entry. Returns how many were removed."""

    @abc.abstractmethod
    def save(self, path: PathArg = None) -> str:
        """Write every entry to ``path`` atomically (default: the journal). Returns the path."""

    @abc.abstractmethod
    def load(self, path: PathArg = None) -> int:
        """Merge the entries stored at ``path`` (default: the journal). Returns the count read."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every add durable on disk now."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release what the queue holds."""
