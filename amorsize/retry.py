"""Retry policy: how many attempts, how long to wait between them, which errors to retry.

A :class:`RetryPolicy` is a small immutable value. It is built once in the parent,
pickled to every worker, and asked per item:

```
  attempt 1 ──fail──► should_retry(exc, 1)? ──yes──► sleep(compute_delay(1)) ──► attempt 2 ...
      │                      │no
      ok                     ▼
      ▼               RetryOutcome(ok=False, error=exc, attempts=n)
  RetryOutcome(ok=True, value=..., attempts=n)
```

Which errors: ``give_up_on`` wins over ``retry_on``. A ``BaseException`` that is not
an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) is never retried and always
propagates, unless a class in ``retry_on`` names it explicitly (``BaseException``
itself does not count as naming it).

How long: the base delay grows exponentially, ``initial_delay * exponential_base **
(attempt - 1)``, and is clamped to ``max_delay`` (computed in log space, so any attempt
count is safe). With ``jitter`` the delay is then drawn uniformly from ``[0.5 d, 1.5 d)``
("equal jitter": retries of many workers spread out, yet never wait less than half the
base delay), and clamped to ``max_delay`` once more, so the cap holds after jitter too.
Clamping before the jitter keeps delays at the cap spread over ``[0.5, 1] * max_delay``
instead of all landing on exactly ``max_delay``.

Retry-After: with ``retry_after=True`` (the default) an error that says when to come
back (a ``retry_after`` attribute, or an HTTP response with a ``Retry-After`` header:
see :mod:`amorsize.retry_after`) sets the delay itself, capped by ``max_delay`` and
not jittered (the server named the time). A runner that shares a rate limiter passes
it to :meth:`RetryPolicy.run` as ``pacer``: the same delay then pauses every process
using that limiter, not only the one that saw the error.

Time is injected: ``sleep`` and ``clock`` default to :func:`time.sleep` and
:func:`time.monotonic`, ``random`` to the :mod:`random` module, so tests never sleep.
The defaults are module-level functions, so a policy pickles (protocol 3 or later:
protocol 2 writes builtin ``OSError`` subclasses such as ``TimeoutError`` as ``OSError``).
"""

from __future__ import annotations

import asyncio
import math
import random as _random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Type, Union

from amorsize._validate import ExceptionTypes, check_seconds, exception_types, invalid_value
from amorsize.retry_after import retry_after_seconds

__all__ = ["Pacer", "RetryOutcome", "RetryPolicy"]

# --- tuning constants ---------------------------------------------------------

#: Retries after the first attempt, so four attempts in all.
DEFAULT_MAX_RETRIES = 3
#: Seconds before the first retry.
DEFAULT_INITIAL_DELAY = 0.1
#: No single wait is ever longer than this many seconds.
DEFAULT_MAX_DELAY = 60.0
#: Each retry waits this many times longer than the one before.
DEFAULT_EXPONENTIAL_BASE = 2.0
#: With jitter a delay ``d`` becomes ``uniform(JITTER_LOW * d, JITTER_HIGH * d)``.
JITTER_LOW = 0.5
JITTER_HIGH = 1.5

ExceptionSpec = Union[Type[BaseException], ExceptionTypes]


class Pacer(Protocol):
    """Anything a Retry-After can pause for every worker, like :class:`amorsize.RateLimit`."""

    def pause(self, seconds: float) -> None: ...


class RandomSource(Protocol):
    """Anything whose ``random()`` returns a float in [0, 1), like :class:`random.Random`."""

    def random(self) -> float: ...


@dataclass(frozen=True)
class RetryOutcome:
    """What running one call under a policy came to: a value or the last error, and the attempts."""

    __slots__ = ("attempts", "error", "ok", "value")

    ok: bool
    value: Any
    error: BaseException | None
    attempts: int

    def __reduce__(self) -> Any:
        return (RetryOutcome, (self.ok, self.value, self.error, self.attempts))


def _type_names(types: ExceptionTypes) -> str:
    inner = ", ".join(t.__name__ for t in types)
    return f"({inner},)" if len(types) == 1 else f"({inner})"


@dataclass(frozen=True, init=False, repr=False)
class RetryPolicy:
    """Retry a failing call up to ``max_retries`` times, with capped exponential backoff."""

    max_retries: int
    initial_delay: float
    max_delay: float
    exponential_base: float
    jitter: bool
    retry_on: ExceptionTypes
    give_up_on: ExceptionTypes
    max_elapsed: float | None
    retry_after: bool
    # Injected collaborators: not part of the policy's value (equality, hash).
    sleep: Callable[[float], Any] = field(compare=False)
    clock: Callable[[], float] = field(compare=False)
    random: RandomSource | None = field(compare=False)

    def __init__(
        self,
        max_retries: int = DEFAULT_MAX_RETRIES,
        initial_delay: float = DEFAULT_INITIAL_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        exponential_base: float = DEFAULT_EXPONENTIAL_BASE,
        jitter: bool = True,
        retry_on: ExceptionSpec = (Exception,),
        give_up_on: ExceptionSpec = (),
        *,
        max_elapsed: float | None = None,
        retry_after: bool = True,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: RandomSource | None = None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise invalid_value("max_retries", max_retries, "a non-negative int")
        initial = check_seconds("initial_delay", initial_delay)
        cap = check_seconds("max_delay", max_delay)
        if initial > cap:
            raise invalid_value(
                "initial_delay", initial_delay, f"a value no greater than max_delay={max_delay!r}"
            )
        if (
            isinstance(exponential_base, bool)
            or not isinstance(exponential_base, (int, float))
            or not (math.isfinite(exponential_base) and exponential_base >= 1)
        ):
            raise invalid_value("exponential_base", exponential_base, "a finite number >= 1")
        for name, flag in (("jitter", jitter), ("retry_after", retry_after)):
            if not isinstance(flag, bool):
                raise invalid_value(name, flag, "True or False")
        if max_elapsed is not None:
            max_elapsed = check_seconds("max_elapsed", max_elapsed)
        if not callable(sleep):
            raise invalid_value("sleep", sleep, "a callable taking seconds")
        if not callable(clock):
            raise invalid_value("clock", clock, "a callable returning seconds")
        if random is not None and not callable(getattr(random, "random", None)):
            raise invalid_value("random", random, "None or an object with a random() method")
        setattr_ = object.__setattr__
        setattr_(self, "max_retries", max_retries)
        setattr_(self, "initial_delay", initial)
        setattr_(self, "max_delay", cap)
        setattr_(self, "exponential_base", float(exponential_base))
        setattr_(self, "jitter", jitter)
        setattr_(self, "retry_on", exception_types("retry_on", retry_on))
        setattr_(self, "give_up_on", exception_types("give_up_on", give_up_on))
        setattr_(self, "max_elapsed", max_elapsed)
        setattr_(self, "retry_after", retry_after)
        setattr_(self, "sleep", sleep)
        setattr_(self, "clock", clock)
        setattr_(self, "random", random)

    @classmethod
    def none(cls) -> RetryPolicy:
        """Never retry: one attempt per call."""
        return cls(max_retries=0)

    def __repr__(self) -> str:
        parts = [
            f"max_retries={self.max_retries!r}",
            f"initial_delay={self.initial_delay!r}",
            f"max_delay={self.max_delay!r}",
            f"exponential_base={self.exponential_base!r}",
            f"jitter={self.jitter!r}",
            f"retry_on={_type_names(self.retry_on)}",
            f"give_up_on={_type_names(self.give_up_on)}",
        ]
        if self.max_elapsed is not None:
            parts.append(f"max_elapsed={self.max_elapsed!r}")
        if not self.retry_after:
            parts.append("retry_after=False")
        for name, default in (("sleep", time.sleep), ("clock", time.monotonic), ("random", None)):
            value = getattr(self, name)
            if value is not default:
                parts.append(f"{name}={value!r}")
        return f"RetryPolicy({', '.join(parts)})"

    # --- strategies -----------------------------------------------------------

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether to try again after ``exc`` ended attempt number ``attempt`` (1-based)."""
        if attempt > self.max_retries or isinstance(exc, self.give_up_on):
            return False
        if isinstance(exc, Exception):
            return isinstance(exc, self.retry_on)
        return self._names_explicitly(exc)

    def compute_delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise invalid_value("attempt", attempt, "an int >= 1")
        delay = self._base_delay(attempt)
        if self.jitter:
            source = self.random if self.random is not None else _random
            spread = JITTER_HIGH - JITTER_LOW
            delay *= JITTER_LOW + spread * source.random()
        return min(delay, self.max_delay)

    def requested_delay(self, exc: BaseException) -> float | None:
        """The Retry-After ``exc`` carries, capped by ``max_delay`` (None: not asked, or not honoured)."""
        if not self.retry_after:
            return None
        seconds = retry_after_seconds(exc)
        return None if seconds is None else min(seconds, self.max_delay)

    # --- running --------------------------------------------------------------

    def run(self, func: Callable[[Any], Any], item: Any, *, pacer: Pacer | None = None) -> RetryOutcome:
        """Call ``func(item)`` with retries; report the value or the last error, never raise it.

        A Retry-After seen on any attempt also pauses ``pacer`` (a shared rate limit).
        """
        start = self.clock() if self.max_elapsed is not None else 0.0
        try:
            return RetryOutcome(True, func(item), None, 1)
        except Exception as exc:
            return self._retry(func, (item,), {}, exc, start, pacer)
        except BaseException as exc:
            if not self._names_explicitly(exc):
                raise
            return self._retry(func, (item,), {}, exc, start, pacer)

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``func(*args, **kwargs)`` with retries; return its value or raise the last error."""
        start = self.clock() if self.max_elapsed is not None else 0.0
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            outcome = self._retry(func, args, kwargs, exc, start)
        except BaseException as exc:
            if not self._names_explicitly(exc):
                raise
            outcome = self._retry(func, args, kwargs, exc, start)
        if outcome.ok:
            return outcome.value
        assert outcome.error is not None
        raise outcome.error

    # --- internals ------------------------------------------------------------

    def _names_explicitly(self, exc: BaseException) -> bool:
        """Whether ``retry_on`` names a class of ``exc`` narrower than ``BaseException``."""
        return any(isinstance(exc, t) and not issubclass(Exception, t) for t in self.retry_on)

    def _base_delay(self, attempt: int) -> float:
        """Exponential delay before jitter, clamped to ``max_delay`` without overflowing."""
        if self.initial_delay == 0.0 or self.exponential_base == 1.0 or attempt == 1:
            return min(self.initial_delay, self.max_delay)
        if self.max_delay == 0.0:
            return 0.0
        log_delay = math.log(self.initial_delay) + (attempt - 1) * math.log(self.exponential_base)
        if log_delay >= math.log(self.max_delay):
            return self.max_delay
        return min(self.initial_delay * self.exponential_base ** (attempt - 1), self.max_delay)

    def _delay_after(self, exc: BaseException, attempt: int, start: float,
                     pacer: Pacer | None) -> float | None:
        """Seconds to wait after ``exc`` ended attempt ``attempt``, or None: give up.

        A Retry-After that ``exc`` carries pauses ``pacer`` (a shared rate limit) too.
        """
        requested = self.requested_delay(exc)
        if requested is not None and pacer is not None:
            pacer.pause(requested)
        if not self.should_retry(exc, attempt):
            return None
        delay = self.compute_delay(attempt) if requested is None else requested
        if self.max_elapsed is not None and self.clock() - start + delay > self.max_elapsed:
            return None
        return delay

    def _retry(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               exc: BaseException, start: float, pacer: Pacer | None = None) -> RetryOutcome:
        """The slow path: attempt 1 failed with ``exc``; keep going while the policy allows."""
        attempt = 1
        try:
            while True:
                delay = self._delay_after(exc, attempt, start, pacer)
                if delay is None:
                    return RetryOutcome(False, None, exc, attempt)
                self.sleep(delay)
                attempt += 1
                try:
                    return RetryOutcome(True, func(*args, **kwargs), None, attempt)
                except Exception as new_exc:
                    exc = new_exc
                except BaseException as new_exc:
                    if not self._names_explicitly(new_exc):
                        raise
                    exc = new_exc
        finally:
            # The last error's traceback holds this frame: returning with the error in a
            # local would make a cycle only the collector frees, with every frame of the
            # failed call and all they hold.
            del exc


def call_with_retry(
    func: Callable[[Any], Any], item: Any, retry: RetryPolicy | None, pacer: Pacer | None = None,
    *, limit: Any = None, deadline: float | None = None,
) -> RetryOutcome:
    """Run ``func(item)`` under ``retry`` (None: one attempt); never raises for its error.

    The one place every runner (workers, the in-process backend, ``capture()``, replay
    and the CLI) calls a user's function. ``pacer``: the run's shared rate limit, paused
    by a Retry-After (see :meth:`RetryPolicy.run`). ``limit``: a
    :class:`~amorsize.RateLimit` each attempt waits for (retries are calls too), at
    most until ``deadline`` (its clock; then the attempt fails with
    :class:`~amorsize.errors.RateLimitTimeoutError`); it is also the pacer.
    """
    if retry is None:
        try:
            if limit is None:
                return RetryOutcome(True, func(item), None, 1)
            with limit.acquire(deadline):
                return RetryOutcome(True, func(item), None, 1)
        except Exception as exc:
            if pacer is not None or limit is not None:
                pause_for_retry_after(pacer or limit, exc)
            return RetryOutcome(False, None, exc, 1)
    if limit is not None:
        func, pacer = _paced(func, limit, deadline), pacer or limit
    return retry.run(func, item, pacer=pacer)


def _paced(func: Callable[[Any], Any], limit: Any, deadline: float | None) -> Callable[[Any], Any]:
    """``func`` with each call waiting for ``limit`` (and holding its concurrency slot)."""

    def attempt(item: Any) -> Any:
        with limit.acquire(deadline):
            return func(item)

    return attempt


def pause_for_retry_after(pacer: Pacer, exc: BaseException) -> None:
    """Without a policy a Retry-After still slows every worker (capped like the default policy)."""
    seconds = retry_after_seconds(exc)
    if seconds is not None:
        pacer.pause(min(seconds, DEFAULT_MAX_DELAY))


async def call_with_retry_async(
    func: Callable[[Any], Any], item: Any, retry: RetryPolicy | None, pacer: Pacer | None = None
) -> RetryOutcome:
    """:func:`call_with_retry` for a coroutine function: ``await func(item)``, waits with ``asyncio.sleep``.

    The policy's delays and its choice of errors are the same; only the wait never
    blocks the event loop (the policy's injected ``sleep`` is not used). A
    cancellation (the item's timeout, Ctrl-C) is never retried: it propagates.
    """
    attempt = 1
    start = retry.clock() if retry is not None and retry.max_elapsed is not None else 0.0
    error: BaseException | None = None
    try:
        while True:
            try:
                return RetryOutcome(True, await func(item), None, attempt)
            except Exception as exc:
                error = exc
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)
                if retry is None or cancelled or not retry._names_explicitly(exc):
                    raise
                error = exc
            delay = None if retry is None else retry._delay_after(error, attempt, start, pacer)
            if delay is None:
                return RetryOutcome(False, None, error, attempt)
            await asyncio.sleep(delay)
            attempt += 1
    finally:
        # The error's traceback holds this frame: ending with it in a local would make a
        # cycle only the collector frees (see RetryPolicy._retry).
        del error
