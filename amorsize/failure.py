"""Failure: the stand-in a failed item leaves in a result list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Failure:
    """Marks the position of an item that failed for good; falsy and picklable.

    ``entry_id`` names the DLQ entry that holds the item and its error (None when
    the run had no dead letter queue).
    """

    entry_id: Optional[str]
    error_type: str
    error_message: str
    reason: str = "exception"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        where = f", entry_id={self.entry_id!r}" if self.entry_id else ""
        return f"Failure({self.reason}: {self.error_type}: {self.error_message!r}{where})"


def is_failure(value: Any) -> bool:
    """True when ``value`` is a :class:`Failure` stand-in."""
    return isinstance(value, Failure)
