"""The options of one execute()/imap() call: one frozen, validated record.

A new option is one field here (with its check in :meth:`RunOptions.__post_init__`)
and one keyword parameter in each of ``execute()`` and ``imap()``; a test keeps
those signatures and these fields in step. :func:`strict_keywords` turns an
unknown keyword into an :class:`~amorsize.errors.UnknownArgumentError` that
suggests the nearest valid name.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import multiprocessing
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Optional, TypeVar, Union

from amorsize._validate import (
    check_callable,
    check_choice,
    check_int,
    check_seconds,
    check_type,
    invalid_value,
)
from amorsize.backends import resolve_backend
from amorsize.breaker import CircuitBreaker
from amorsize.checkpoint import Checkpoint
from amorsize.errors import InvalidTypeError, UnknownArgumentError
from amorsize.pacing import RateLimit
from amorsize.serialization import short_repr

#: Target seconds of work per chunk for adaptive chunking.
TARGET_CHUNK_SECONDS = 0.2
ON_FAILURE_MODES = ("dlq", "raise")
ON_OPEN_MODES = ("dead_letter", "wait")

OnFailure = Union[str, Callable[[Any], Any], None]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RunOptions:
    """Every option of a run, checked once; ``on_failure`` and ``backend`` resolved."""

    n_jobs: Optional[int] = None
    chunksize: Optional[int] = None
    retry: Any = None
    dlq: Any = None
    timeout: Optional[float] = None
    on_failure: OnFailure = None
    ordered: bool = True
    progress: bool = False
    on_progress: Optional[Callable[[int, Optional[int]], Any]] = None
    start_method: Optional[str] = None
    max_crashes: Optional[int] = None
    target_chunk_duration: float = TARGET_CHUNK_SECONDS
    backend: Any = None
    dry_run: bool = True
    circuit_breaker: Optional[CircuitBreaker] = None
    on_open: str = "dead_letter"
    checkpoint: Optional[Checkpoint] = None
    rate_limit: Any = None
    max_failures: Union[int, float, None] = None
    concurrency: Optional[int] = None

    def __post_init__(self) -> None:
        check_int("n_jobs", self.n_jobs, 1, optional=True)
        check_int("concurrency", self.concurrency, 1, optional=True)
        check_int("chunksize", self.chunksize, 1, optional=True)
        check_int("max_crashes", self.max_crashes, 0, optional=True)
        timeout = self.timeout
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0
        ):
            raise invalid_value("timeout", timeout, "None or a number of seconds > 0")
        check_seconds("target_chunk_duration", self.target_chunk_duration, positive=True)
        if self.retry is not None and not callable(getattr(self.retry, "run", None)):
            raise InvalidTypeError(f"retry={self.retry!r} is not valid; expected a RetryPolicy or None")
        self._set("dlq", _checked_dlq(self.dlq))
        self._set("on_failure", self._failure_mode())
        if self.on_progress is not None and not callable(self.on_progress):
            raise invalid_value("on_progress", self.on_progress, "None or a callable(done, total)")
        check_type("circuit_breaker", self.circuit_breaker, CircuitBreaker, "a CircuitBreaker or None",
                   optional=True)
        check_choice("on_open", self.on_open, ON_OPEN_MODES)
        check_type("checkpoint", self.checkpoint, Checkpoint, "a Checkpoint", optional=True)
        check_type("rate_limit", self.rate_limit, RateLimit, "a RateLimit or None", optional=True)
        check_max_failures(self.max_failures)
        for flag in ("ordered", "progress", "dry_run"):
            check_type(flag, getattr(self, flag), bool, "True or False")
        if self.start_method is not None:
            methods = multiprocessing.get_all_start_methods()
            if self.start_method not in methods:
                raise invalid_value("start_method", self.start_method,
                                    "None or one of " + ", ".join(map(repr, methods)))
        self._set("backend", resolve_backend(self.backend))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen record, once, in __post_init__

    def _failure_mode(self) -> OnFailure:
        mode = self.on_failure
        if mode is None:
            return "dlq" if self.dlq is not None else "raise"
        if callable(mode):
            return mode
        if mode not in ON_FAILURE_MODES:
            raise invalid_value("on_failure", mode, "'dlq', 'raise' or a callable(entry)")
        if mode == "dlq" and self.dlq is None:
            raise invalid_value("on_failure", mode, "'raise' or a callable when dlq is None")
        return mode

    @classmethod
    def of(cls, arguments: Dict[str, Any]) -> RunOptions:
        """The options among ``arguments`` (a call's ``locals()``); others are ignored."""
        return cls(**{name: arguments[name] for name in _FIELD_NAMES if name in arguments})


#: RunOptions' field names, read once (``dataclasses.fields()`` per call cost more than a
#: call over a short list runs).
_FIELD_NAMES = tuple(f.name for f in fields(RunOptions))


def _checked_dlq(dlq: Any) -> Any:
    """A queue, or None; a path (str or os.PathLike) is a DeadLetterQueue in that directory."""
    if dlq is None:
        return None
    from amorsize.dlq.base import DeadLetterQueueBase
    from amorsize.dlq.policy import DLQPolicy
    from amorsize.dlq.queue import DeadLetterQueue

    if isinstance(dlq, DeadLetterQueueBase):
        return dlq
    if isinstance(dlq, (str, os.PathLike)):
        return DeadLetterQueue(DLQPolicy(directory=os.fspath(dlq)))
    raise InvalidTypeError(
        f"dlq={dlq!r} is not valid; expected a DeadLetterQueue, a SharedDeadLetterQueue, "
        "a path (a DLQ directory) or None"
    )


def check_max_failures(value: Any) -> None:
    """``max_failures``: None, an int >= 0, or a float strictly between 0 and 1 (a share)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    if isinstance(value, float) and 0.0 < value < 1.0:
        return
    raise invalid_value("max_failures", value,
                        "None, an int >= 0 (failed items) or a float in (0, 1) (a share of finished items)")


def check_func(func: Any, items: Any) -> None:
    """``func`` must be callable and ``items`` iterable: the run's first checks, like ``map()``."""
    check_callable("func", func)
    kind = type(items)
    if not (hasattr(kind, "__iter__") or hasattr(kind, "__getitem__")):  # what iter() takes
        raise InvalidTypeError(
            f"items={short_repr(items)} is not valid; expected an iterable (a list, a range, "
            "a generator, ...)")


def strict_keywords(function: F) -> F:
    """Make an unknown keyword raise :class:`UnknownArgumentError` naming the nearest valid one.

    The wrapped function keeps its signature for ``help()`` and ``inspect.signature``.
    """
    accepted = [
        name for name, p in inspect.signature(function).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    known = frozenset(accepted)

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if not known.issuperset(kwargs):
            unknown = next(name for name in kwargs if name not in known)
            raise unknown_argument(function.__name__, unknown, accepted)
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]


def unknown_argument(where: str, name: str, accepted: list[str]) -> UnknownArgumentError:
    """The error for keyword ``name`` that ``where()`` does not take, with a suggestion."""
    near = difflib.get_close_matches(name, accepted, n=1)
    hint = f"; did you mean {near[0]}?" if near else f"; it accepts: {', '.join(accepted)}"
    return UnknownArgumentError(f"{where}() got an unexpected keyword argument {name!r}{hint}")
