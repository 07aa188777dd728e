"""The amorsize exception hierarchy.

Every public error derives from :class:`AmorsizeError`. Validation errors also
derive from the builtin they stand in for (``ValueError``, ``TypeError``), and
I/O or process errors from the stdlib error a user would already catch, so
existing ``except`` clauses keep working (the loky convention).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from typing import Any


class AmorsizeError(Exception):
    """Root of every error amorsize raises."""


class InvalidArgumentError(AmorsizeError, ValueError):
    """An argument has a value amorsize does not accept."""


class InvalidTypeError(AmorsizeError, TypeError):
    """An argument has a type amorsize does not accept."""


class UnknownArgumentError(AmorsizeError, TypeError):
    """A call got a keyword argument it does not take; the message suggests the nearest."""


# --- dead letter queue -------------------------------------------------------


class DLQError(AmorsizeError):
    """A dead letter queue operation failed."""


class DLQFileNotFoundError(DLQError, FileNotFoundError):
    """``load()`` was pointed at a file that does not exist."""


class DLQCorruptError(DLQError, ValueError):
    """A DLQ file holds a record that cannot be read, before its last line."""

    def __init__(self, path: str, line: int, detail: str) -> None:
        super().__init__(
            f"DLQ file {path!r} is corrupt at line {line}: {detail}. "
            "Open it with strict=False to skip unreadable records (they are counted)."
        )
        self.path = path
        self.line = line
        self.detail = detail

    def __reduce__(self) -> Any:
        return (type(self), (self.path, self.line, self.detail))


class StorageError(AmorsizeError, OSError):
    """A file or directory amorsize writes cannot be used safely.

    A symlink where a journal, lock, checkpoint or export goes (never followed), a
    directory that is a file, group- or world-writable, owned by another user, not
    writable, or a checkpoint directory that fails the write probe (full disk).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DLQStorageError(DLQError, StorageError):
    """The DLQ's directory, journal or lock file cannot be used safely (see StorageError)."""


class DLQPersistError(DLQError):
    """Entries a dead letter queue acknowledged could not be written to its journal.

    Raised by ``add()`` with ``DLQPolicy(on_persist_error="raise")`` (the entry stays
    in memory), and by ``flush()``/``close()`` whatever the policy, after the unwritten
    entries were saved to a private rescue file named in the message (``rescue_path``).
    """

    def __init__(self, message: str, rescue_path: str | None = None) -> None:
        super().__init__(message)
        self.rescue_path = rescue_path

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0], self.rescue_path))


class PickleNotAllowedError(DLQError, PermissionError):
    """Loading a pickled payload was refused because pickle was not opted into."""


# --- shared queue and workers -------------------------------------------------


class SharedDLQUnavailableError(AmorsizeError, ConnectionError):
    """The manager process behind a :class:`SharedDeadLetterQueue` cannot be reached.

    ``failure`` carries the failure that was being recorded, if any, so it is never lost.
    """

    def __init__(self, message: str, address: Any = None, failure: Any = None) -> None:
        super().__init__(message)
        self.address = address
        self.failure = failure

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0], self.address, self.failure))


class TaskFailedError(AmorsizeError):
    """An item failed and the run was asked to raise (``on_failure="raise"``).

    Carries the original exception's type name, message and traceback text, since
    the exception object itself never crosses a process boundary.
    """

    def __init__(
        self,
        error_type: str,
        error_message: str,
        traceback_text: str | None = None,
        item: Any = None,
        reason: str = "exception",
    ) -> None:
        text = f"{error_type}: {error_message}"
        if reason != "exception":
            text = f"[{reason}] {text}"
        if traceback_text:
            text += "\n\nWorker traceback:\n" + traceback_text
        super().__init__(text)
        self.error_type = error_type
        self.error_message = error_message
        self.traceback_text = traceback_text
        self.item = item
        self.reason = reason

    def __reduce__(self) -> Any:
        return (
            type(self),
            (self.error_type, self.error_message, self.traceback_text, self.item, self.reason),
        )


class CrashLoopError(AmorsizeError, BrokenProcessPool):
    """Workers crashed more often than the run's crash budget allows."""


class FailureBudgetExceededError(AmorsizeError):
    """More items failed for good than ``max_failures`` allows; the run stopped early.

    Every input is accounted for: a value in :attr:`results`, a DLQ entry (a
    :class:`~amorsize.Failure` in :attr:`results`), or a position in
    :attr:`not_started` (a list of ``range`` objects; None in :attr:`results`).
    """

    def __init__(
        self, message: str, *, failed: int, finished: int, max_failures: float,
        results: list[Any], not_started: list[range],
    ) -> None:
        super().__init__(message)
        self.failed = failed
        self.finished = finished
        self.max_failures = max_failures
        self.results = results
        self.not_started = not_started

    def __reduce__(self) -> Any:
        return (_rebuild_budget_error, (str(self), self.failed, self.finished, self.max_failures,
                                        self.results, self.not_started))


def _rebuild_budget_error(
    message: str, failed: int, finished: int, max_failures: float, results: list[Any],
    not_started: list[range],
) -> FailureBudgetExceededError:
    return FailureBudgetExceededError(message, failed=failed, finished=finished,
                                      max_failures=max_failures, results=results,
                                      not_started=not_started)


class WorkerCrashedError(AmorsizeError):
    """Recorded in the DLQ for an item whose worker process died while running it."""


class ItemTimeoutError(AmorsizeError, TimeoutError):
    """Recorded in the DLQ for an item that ran past the per-item timeout."""


class MainGuardError(AmorsizeError, RuntimeError):
    """A worker could not start: the main module re-runs without ``if __name__ == "__main__":``."""


class InputIteratorError(AmorsizeError):
    """The input iterator raised; ``__cause__`` is its error.

    ``results`` (set by ``execute()``) holds the results of every item read before
    it raised, aligned with those items.
    """

    results: list = []


class CircuitOpenError(AmorsizeError):
    """A call was refused because its circuit breaker is open."""


class RateLimitTimeoutError(AmorsizeError, TimeoutError):
    """A call could not start under its :class:`~amorsize.RateLimit` before its deadline."""


class CheckpointMismatchError(AmorsizeError, ValueError):
    """A checkpoint belongs to another function or another input."""


class BackendNotFoundError(AmorsizeError, LookupError):
    """No execution backend is registered under the requested name."""


# --- warnings -----------------------------------------------------------------


class AmorsizeWarning(UserWarning):
    """Root of every warning amorsize issues."""


class OptimizerWarning(AmorsizeWarning):
    """Something the optimizer could not measure or had to work around."""


class BlockedLoopWarning(AmorsizeWarning, RuntimeWarning):
    """An ``async def`` function blocked its event loop (a blocking call inside a coroutine)."""
