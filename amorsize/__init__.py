"""Amorsize: fault-tolerant parallel map over processes, with a shared dead letter queue.

``import amorsize`` loads nothing but this file: each public name is imported from
its module on first use (module ``__getattr__``, as in :mod:`concurrent.futures`),
so a CLI or a worker that needs one name does not pay for the engine, psutil,
cloudpickle or the multiprocessing manager.
"""

from __future__ import annotations

import importlib

#: True only for type checkers: importing typing here would cost more than the rest
#: of this module (mypy and pyright honour a local TYPE_CHECKING).
TYPE_CHECKING = False

__version__ = "0.1.0"

#: Public name -> the module that defines it. Add a name here (and to the
#: TYPE_CHECKING block below, for type checkers) to export it.
_LAZY: dict[str, str] = {
    # running work
    "execute": "amorsize.executor",
    "imap": "amorsize.executor",
    "optimize": "amorsize.sizing.optimizer",
    "OptimizationResult": "amorsize.sizing.result",
    # policies
    "Checkpoint": "amorsize.checkpoint",
    "CircuitBreaker": "amorsize.breaker",
    "CircuitState": "amorsize.breaker",
    "RetryOutcome": "amorsize.retry",
    "RetryPolicy": "amorsize.retry",
    "RateLimit": "amorsize.pacing",
    # failures and the dead letter queue
    "Failure": "amorsize.failure",
    "is_failure": "amorsize.failure",
    "DeadLetterQueue": "amorsize.dlq.queue",
    "DeadLetterQueueBase": "amorsize.dlq.base",
    "DLQEntry": "amorsize.dlq.entry",
    "DLQFormat": "amorsize.dlq.policy",
    "DLQPolicy": "amorsize.dlq.policy",
    "SharedDeadLetterQueue": "amorsize.dlq.shared",
    "replay_failed_items": "amorsize.replay",
    "PickledPayload": "amorsize.serialization",
    "UnserializableItem": "amorsize.serialization",
    # errors and warnings
    "AmorsizeError": "amorsize.errors",
    "AmorsizeWarning": "amorsize.errors",
    "BackendNotFoundError": "amorsize.errors",
    "BlockedLoopWarning": "amorsize.errors",
    "CheckpointMismatchError": "amorsize.errors",
    "CircuitOpenError": "amorsize.errors",
    "InputIteratorError": "amorsize.errors",
    "MainGuardError": "amorsize.errors",
    "CrashLoopError": "amorsize.errors",
    "DLQCorruptError": "amorsize.errors",
    "DLQError": "amorsize.errors",
    "DLQFileNotFoundError": "amorsize.errors",
    "DLQPersistError": "amorsize.errors",
    "DLQStorageError": "amorsize.errors",
    "StorageError": "amorsize.errors",
    "FailureBudgetExceededError": "amorsize.errors",
    "InvalidArgumentError": "amorsize.errors",
    "InvalidTypeError": "amorsize.errors",
    "ItemTimeoutError": "amorsize.errors",
    "OptimizerWarning": "amorsize.errors",
    "PickleNotAllowedError": "amorsize.errors",
    "RateLimitTimeoutError": "amorsize.errors",
    "SharedDLQUnavailableError": "amorsize.errors",
    "TaskFailedError": "amorsize.errors",
    "UnknownArgumentError": "amorsize.errors",
    "WorkerCrashedError": "amorsize.errors",
}

__all__ = [
    "AmorsizeError",
    "AmorsizeWarning",
    "BackendNotFoundError",
    "BlockedLoopWarning",
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
    "DLQPersistError",
    "DLQPolicy",
    "DLQStorageError",
    "DeadLetterQueue",
    "DeadLetterQueueBase",
    "Failure",
    "FailureBudgetExceededError",
    "InputIteratorError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "ItemTimeoutError",
    "MainGuardError",
    "OptimizationResult",
    "OptimizerWarning",
    "PickleNotAllowedError",
    "PickledPayload",
    "RateLimit",
    "RateLimitTimeoutError",
    "RetryOutcome",
    "RetryPolicy",
    "SharedDLQUnavailableError",
    "SharedDeadLetterQueue",
    "StorageError",
    "TaskFailedError",
    "UnknownArgumentError",
    "UnserializableItem",
    "WorkerCrashedError",
    "__version__",
    "execute",
    "imap",
    "is_failure",
    "optimize",
    "replay_failed_items",
]

if TYPE_CHECKING:
    from typing import Any

    from amorsize.breaker import CircuitBreaker, CircuitState
    from amorsize.checkpoint import Checkpoint
    from amorsize.dlq.base import DeadLetterQueueBase
    from amorsize.dlq.entry import DLQEntry
    from amorsize.dlq.policy import DLQFormat, DLQPolicy
    from amorsize.dlq.queue import DeadLetterQueue
    from amorsize.dlq.shared import SharedDeadLetterQueue
    from amorsize.errors import (
        AmorsizeError,
        AmorsizeWarning,
        BackendNotFoundError,
        BlockedLoopWarning,
        CheckpointMismatchError,
        CircuitOpenError,
        CrashLoopError,
        DLQCorruptError,
        DLQError,
        DLQFileNotFoundError,
        DLQPersistError,
        DLQStorageError,
        FailureBudgetExceededError,
        InputIteratorError,
        InvalidArgumentError,
        InvalidTypeError,
        ItemTimeoutError,
        MainGuardError,
        OptimizerWarning,
        PickleNotAllowedError,
        RateLimitTimeoutError,
        SharedDLQUnavailableError,
        StorageError,
        TaskFailedError,
        UnknownArgumentError,
        WorkerCrashedError,
    )
    from amorsize.executor import execute, imap
    from amorsize.failure import Failure, is_failure
    from amorsize.pacing import RateLimit
    from amorsize.replay import replay_failed_items
    from amorsize.retry import RetryOutcome, RetryPolicy
    from amorsize.serialization import PickledPayload, UnserializableItem
    from amorsize.sizing.optimizer import optimize
    from amorsize.sizing.result import OptimizationResult


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    """Every public name, loaded or not, plus this module's own attributes."""
    return sorted(set(globals()) | set(__all__))
