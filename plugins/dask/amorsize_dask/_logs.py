"""While a cluster of ours runs, distributed's log records go to the ``amorsize`` logger at DEBUG.

A worker death is a failure amorsize handles (the item is bisected and dead-lettered),
yet distributed reports it with ``scheduler - ERROR`` and ``nanny - WARNING`` lines on
stderr. For a cluster amorsize starts itself, every ``distributed*`` logger that exists
is given one handler that re-logs the record on ``amorsize.dask`` at DEBUG, and its
state is restored when the last of our clusters closes. A user's own cluster (given
by address or client) never passes through here, so its logging is untouched.

The nanny's ``Worker process <pid> exited with status <code>`` record (INFO) is also
read to remember each dead worker's exit code for the crash's DLQ entry.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

#: Where distributed's records go, at DEBUG.
ROUTED_TO = "amorsize.dask"
#: Exit codes remembered (the newest kept): enough for the deaths of one run.
MAX_EXIT_CODES = 1024
#: The nanny's death messages (distributed.nanny.WorkerProcess._death_message).
_DEATH = re.compile(r"Worker process (\d+) (?:exited with status (-?\d+)|was killed by signal (\d+))")

_lock = threading.Lock()
_users = 0
_saved: dict[str, tuple[list[logging.Handler], bool, int]] = {}
exit_codes: dict[int, int] = {}


class _Route(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            found = _DEATH.search(message)
            if found:
                pid, status, signal = found.groups()
                exit_codes[int(pid)] = int(status) if status is not None else -int(signal)
                while len(exit_codes) > MAX_EXIT_CODES:
                    exit_codes.pop(next(iter(exit_codes)))
            logging.getLogger(ROUTED_TO).debug(
                "%s - %s - %s", record.name, record.levelname, message, exc_info=record.exc_info
            )
        except Exception:  # a log handler must never raise
            self.handleError(record)


_route = _Route(logging.NOTSET)


def _distributed_loggers() -> list[str]:
    names = [name for name in logging.root.manager.loggerDict
             if name == "distributed" or name.startswith("distributed.")]
    return sorted({"distributed", "distributed.nanny", *names})


def route_distributed_logs() -> None:
    """Start routing (counted: each call needs one :func:`restore_distributed_logs`)."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        for name in _distributed_loggers():
            logger = logging.getLogger(name)
            _saved[name] = (list(logger.handlers), logger.propagate, logger.level)
            logger.handlers = [_route]
            logger.propagate = False
        nanny = logging.getLogger("distributed.nanny")
        if nanny.getEffectiveLevel() > logging.INFO:  # its death messages carry exit codes
            nanny.setLevel(logging.INFO)


def restore_distributed_logs() -> None:
    """Undo one :func:`route_distributed_logs`; the last one restores every logger."""
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        for name, (handlers, propagate, level) in _saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        _saved.clear()


def last_exit_code(pid: Any) -> int | None:
    """The exit code the nanny of our cluster logged for worker ``pid``, if it did."""
    return exit_codes.get(pid) if isinstance(pid, int) else None

