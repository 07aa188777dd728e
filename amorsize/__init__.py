"""Amorsize: fault-tolerant parallel map over processes, with a shared dead letter queue."""

from __future__ import annotations

from amorsize.dlq import (
    DeadLetterQueue,
    DLQEntry,
    DLQFormat,
    DLQPolicy,
    replay_failed_items,
)
from amorsize.errors import (
    AmorsizeError,
    BackendNotFoundError,
    CheckpointMismatchError,
    CircuitOpenError,
    CrashLoopError,
    DLQCorruptError,
    DLQError,
    DLQFileNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    PickleNotAllowedError,
    SharedDLQUnavailableError,
    TaskFailedError,
)

__version__ = "0.1.0"

__all__ = [
    "AmorsizeError",
    "BackendNotFoundError",
    "CheckpointMismatchError",
    "CircuitOpenError",
    "CrashLoopError",
    "DLQCorruptError",
    "DLQEntry",
    "DLQError",
    "DLQFileNotFoundError",
    "DLQFormat",
    "DLQPolicy",
    "DeadLetterQueue",
    "InvalidArgumentError",
    "InvalidTypeError",
    "PickleNotAllowedError",
    "SharedDLQUnavailableError",
    "TaskFailedError",
    "__version__",
    "replay_failed_items",
]
