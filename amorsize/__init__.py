"""Amorsize: fault-tolerant parallel map over processes, with a shared dead letter queue."""

from __future__ import annotations

from amorsize.breaker import CircuitBreaker, CircuitState
from amorsize.checkpoint import Checkpoint
from amorsize.dlq import DeadLetterQueue, DeadLetterQueueBase, DLQEntry, DLQFormat, DLQPolicy
from amorsize.dlq.shared import SharedDeadLetterQueue
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
from amorsize.executor import ItemTimeoutError, WorkerCrashedError, execute, imap
from amorsize.failure import Failure, is_failure
from amorsize.optimizer import OptimizationResult, optimize
from amorsize.replay import replay_failed_items
from amorsize.retry import RetryOutcome, RetryPolicy
from amorsize.serialization import PickledPayload, UnserializableItem

__version__ = "0.1.0"

__all__ = [
    "AmorsizeError",
    "BackendNotFoundError",
    "Checkpoint",
    "CheckpointMismatchError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CrashLoopError",
    "DLQCorruptError",
    "DLQEntry",
    "DLQError",
    "DLQFileNotFoundError",
    "DLQFormat",
    "DLQPolicy",
    "DeadLetterQueue",
    "DeadLetterQueueBase",
    "Failure",
    "InvalidArgumentError",
    "InvalidTypeError",
    "ItemTimeoutError",
    "OptimizationResult",
    "PickleNotAllowedError",
    "PickledPayload",
    "RetryOutcome",
    "RetryPolicy",
    "SharedDLQUnavailableError",
    "SharedDeadLetterQueue",
    "TaskFailedError",
    "UnserializableItem",
    "WorkerCrashedError",
    "__version__",
    "execute",
    "imap",
    "is_failure",
    "optimize",
    "replay_failed_items",
]
