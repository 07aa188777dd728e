"""DLQEntry: one failed item with its error, traceback, attempt count and context."""

from __future__ import annotations

import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Dict

from amorsize._validate import check_choice, check_type
from amorsize.dlq.signature import entry_signature
from amorsize.tracebacks import traceback_text

REASONS = (
    "exception", "timeout", "worker_crash", "circuit_open", "unpicklable_result", "unpicklable_item",
)

_sequence = itertools.count()
_process_token = secrets.token_hex(4)


def _reset_after_fork() -> None:
    # A forked child must not mint the same ids as its parent.
    global _process_token, _sequence
    _process_token = secrets.token_hex(4)
    _sequence = itertools.count()


os.register_at_fork(after_in_child=_reset_after_fork)


def new_entry_id(time_ns: int | None = None) -> str:
    """A unique id that sorts by creation time.

    16 hex digits of wall-clock nanoseconds, then a per-process sequence number and
    a random per-process token, so ids never collide across processes or forks.
    """
    stamp = time.time_ns() if time_ns is None else time_ns
    # The same text as f"{stamp:016x}{sequence:08x}{token}", formatted in one go.
    return format((stamp << 32) | (next(_sequence) & 0xFFFFFFFF), "024x") + _process_token


_qualnames: Dict[type, str] = {}


def qualified_type_name(cls: type) -> str:
    """``module.QualName`` of an exception class; builtins stay bare (``ValueError``)."""
    name = _qualnames.get(cls)
    if name is None:
        module = getattr(cls, "__module__", None)
        name = cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"
        if len(_qualnames) < 4096:  # bounded: classes created in a loop must not leak
            _qualnames[cls] = name
    return name


def format_traceback(error: BaseException) -> str | None:
    """The traceback text of ``error`` from its own ``__traceback__``, with chained causes.

    Works outside an ``except`` block. Returns None for an exception that was never raised
    and has no cause or context. Written by :func:`amorsize.tracebacks.traceback_text`,
    which skips the column markers that make the stdlib's version cost ~100 us.
    """
    return traceback_text(error)


def error_message(error: BaseException) -> str:
    """``str(error)``, never raising (a broken ``__str__`` must not lose the failure)."""
    try:
        return str(error)
    except Exception as exc:
        return f"<str() of {type(error).__qualname__} failed: {type(exc).__name__}>"


@dataclass
class DLQEntry:
    """A failed item and everything needed to understand and replay it.

    Entries compare equal by value. ``entry_id`` is unique and sorts by time.
    ``reason`` is one of ``REASONS``.
    """

    item: Any
    error_type: str
    error_message: str
    timestamp: float
    traceback: str | None = None
    retry_count: int = 0
    metadata: Dict[str, Any] = field(default_factory=dict)
    entry_id: str = field(default_factory=new_entry_id)
    reason: str = "exception"
    error_qualname: str | None = None

    @classmethod
    def from_exception(
        cls,
        item: Any,
        error: BaseException,
        *,
        retry_count: int = 0,
        metadata: Dict[str, Any] | None = None,
        include_traceback: bool = True,
        reason: str = "exception",
    ) -> DLQEntry:
        """Build an entry from an exception object (its traceback is read, not kept).

        Raises:
            InvalidTypeError: ``error`` is not an exception instance.
            InvalidArgumentError: ``reason`` is not one of ``REASONS``.
        """
        if not isinstance(error, BaseException):  # checked inline first: add() is a hot path
            check_type("error", error, BaseException, "an exception instance")
        if reason != "exception":
            check_choice("reason", reason, REASONS)
        kind = type(error)
        now_ns = time.time_ns()
        return cls(
            item,
            kind.__name__,
            error_message(error),
            now_ns / 1e9,
            format_traceback(error) if include_traceback else None,
            retry_count,
            dict(metadata) if metadata else {},
            new_entry_id(now_ns),
            reason,
            qualified_type_name(kind),
        )

    @property
    def signature(self) -> str:
        """Error type plus message with numbers, ids, quoted strings and paths taken out.

        Entries that failed the same way for different items share it (see
        :mod:`amorsize.dlq.signature`); computed from the error fields, never stored.
        """
        return entry_signature(self)

    @property
    def function(self) -> str | None:
        """The qualified name of the function that failed, as recorded in ``metadata``."""
        name = self.metadata.get("function") if isinstance(self.metadata, dict) else None
        return name if isinstance(name, str) else None

    def to_dict(self) -> Dict[str, Any]:
        """All fields as a dict (the item and metadata are not copied or encoded)."""
        return {
            "entry_id": self.entry_id,
            "item": self.item,
            "error_type": self.error_type,
            "error_qualname": self.error_qualname,
            "error_message": self.error_message,
            "reason": self.reason,
            "timestamp": self.timestamp,
            "traceback": self.traceback,
            "retry_count": self.retry_count,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> DLQEntry:
        """Inverse of :meth:`to_dict`; accepts dicts from older versions without the new fields."""
        return cls(
            item=data.get("item"),
            error_type=data["error_type"],
            error_message=data.get("error_message", ""),
            timestamp=data.get("timestamp", 0.0),
            traceback=data.get("traceback"),
            retry_count=data.get("retry_count", 0),
            metadata=dict(data.get("metadata") or {}),
            entry_id=data.get("entry_id") or new_entry_id(),
            reason=data.get("reason", "exception"),
            error_qualname=data.get("error_qualname"),
        )
