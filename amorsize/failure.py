"""Failure: the stand-in a failed item leaves in a result list, and the one builder of failure records."""

from __future__ import annotations

import copyreg
import os
import socket
from dataclasses import dataclass
from typing import Any

from amorsize.dlq.entry import DLQEntry
from amorsize.serialization import UnserializableItem, pack_for_transport

_hostname: str | None = None
_pid: int = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


# getpid() is a system call (glibc keeps no copy): a failure record reads ours from here.
os.register_at_fork(after_in_child=_new_pid)


@dataclass(frozen=True)
class Failure:
    """Marks the position of an item that failed for good; falsy and picklable.

    ``entry_id`` names the DLQ entry that holds the item and its error (None when
    the run had no dead letter queue).
    """

    entry_id: str | None
    error_type: str
    error_message: str
    reason: str = "exception"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> Any:
        # Four fields through new_failure(): the default (NEWOBJ, then the instance dict,
        # after looking for __getnewargs_ex__ and __getnewargs__) cost ~4x as much, and a
        # pool pickles one per failed item.
        if type(self) is not Failure:  # a subclass pickles as any dataclass does
            return copyreg.__newobj__, (type(self),), dict(self.__dict__)  # type: ignore[attr-defined]
        return new_failure, (self.entry_id, self.error_type, self.error_message, self.reason)

    def __repr__(self) -> str:
        where = f", entry_id={self.entry_id!r}" if self.entry_id else ""
        return f"Failure({self.reason}: {self.error_type}: {self.error_message!r}{where})"


def new_failure(
    entry_id: str | None, error_type: str, error_message: str, reason: str = "exception",
) -> Failure:
    """``Failure(...)`` without the frozen dataclass's ``__init__`` (four
    ``object.__setattr__`` calls, ~7k instructions): one is made per failed item."""
    failure = _new_object(Failure)
    _set_attribute(failure, "__dict__", {"entry_id": entry_id, "error_type": error_type,
                                         "error_message": error_message, "reason": reason})
    return failure


_new_object = object.__new__
_set_attribute = object.__setattr__


def is_failure(value: Any) -> bool:
    """True when ``value`` is a :class:`Failure` stand-in."""
    return isinstance(value, Failure)


def hostname() -> str:
    """This machine's host name, looked up once per process."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname


def function_name(func: Any) -> str:
    """``module.qualname`` of a callable, for failure records."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}"


def failure_entry(
    item: Any,
    error: BaseException,
    *,
    attempts: int,
    function: str,
    include_traceback: bool = True,
    reason: str = "exception",
    extra: dict[str, Any] | None = None,
) -> DLQEntry:
    """The DLQ entry a worker sends for a failed item, with its item packed for transport.

    ``retry_count`` is the number of retries made (attempts - 1); ``metadata`` holds
    the attempts, the worker's pid and host, and the function's qualname.
    """
    packed = pack_for_transport(item)
    metadata = worker_metadata(attempts, function)
    if isinstance(packed, UnserializableItem):
        metadata["item_unserializable"] = True
    if extra:
        metadata.update(extra)
    return DLQEntry.from_exception(
        packed,
        error,
        retry_count=max(0, attempts - 1),
        metadata=metadata,
        include_traceback=include_traceback,
        reason=reason,
    )


def worker_metadata(attempts: int, function: str) -> dict[str, Any]:
    """The metadata of a worker's failure record: attempts, this process's pid and host, function."""
    return {"attempts": attempts, "pid": _pid, "host": hostname(), "function": function}


def failure_of(entry: DLQEntry) -> Failure:
    """The :class:`Failure` stand-in for ``entry``."""
    return new_failure(entry.entry_id, entry.error_type, entry.error_message, entry.reason)
