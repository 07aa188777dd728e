"""Circuit breaker: stop calling a service that keeps failing, then probe it carefully.

```
            counted failures reach failure_threshold in a row,
            or the failure rate over the last `window` calls reaches failure_rate
   CLOSED ─────────────────────────────────────────────────────────────► OPEN
     ▲                                                                  │  ▲
     │ half_open_max_calls trials succeeded      reset_timeout elapsed  │  │ any counted
     │                                           (seen lazily, on the   │  │ failure
     └──────────────────────── HALF_OPEN ◄────── next state read)  ─────┘  │
                                   └───────────────────────────────────────┘
```

CLOSED lets every call through and counts outcomes. OPEN refuses calls until
``reset_timeout`` seconds (on the injected monotonic ``clock``) have passed, then becomes
HALF_OPEN the next time anyone looks. HALF_OPEN admits at most ``half_open_max_calls``
trial calls; it closes once that many trials have succeeded, and re-opens (restarting the
timer) on the first counted failure. A success reported in HALF_OPEN without a trial slot
reserved by :meth:`~CircuitBreaker.allow` does not count towards closing; a success or
failure reported while OPEN (a call that started before the circuit opened) is tallied
in :attr:`~CircuitBreaker.stats` but changes nothing.

What counts: an exception is a failure when it is an instance of ``counts`` and not of
``ignores``. Any other ``Exception`` counts as a success, as in pybreaker: the service
answered, the caller's input was the problem. A ``BaseException`` that is not an
``Exception`` and that ``counts``/``ignores`` do not name (``KeyboardInterrupt``,
``SystemExit``) says nothing about the service: it is neither, and gives back the trial
slot it held. The parent of a process pool often only has a failure's type name: a name
counts as a failure unless it equals the ``__name__`` or ``module.qualname`` of a class
in ``ignores`` (subclasses and ``counts`` cannot be checked from a name).

Two APIs. The low-level one serves a dispatcher that sees outcomes reported by many
workers: :meth:`allow`, :meth:`release`, :meth:`record_success`, :meth:`record_failure`.
The high-level one wraps calls: ``@breaker``, ``with breaker:``, :meth:`call`; a refused
call raises :class:`~amorsize.errors.CircuitOpenError`.

Every method is thread-safe. ``on_state_change(old, new)`` runs after the lock is
released, so it may call back into the breaker; transitions from different threads may
be reported out of order. A breaker pickles with its state; the timer of an OPEN breaker
stays meaningful in another process only with a system-wide clock such as
:func:`time.monotonic` on Linux.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, TypeVar

from amorsize._breaker_window import ClosedWindow
from amorsize._validate import check_fraction, check_int, check_seconds, exception_types, invalid_value
from amorsize.errors import CircuitOpenError
from amorsize.retry import ExceptionSpec

__all__ = ["BreakerStats", "CircuitBreaker", "CircuitState"]

# --- tuning constants ---------------------------------------------------------

#: Consecutive counted failures that open a closed circuit.
DEFAULT_FAILURE_THRESHOLD = 5
#: Seconds an open circuit refuses calls before it lets trial calls through.
DEFAULT_RESET_TIMEOUT = 30.0
#: Trial calls a half-open circuit admits; that many successes close it.
DEFAULT_HALF_OPEN_MAX_CALLS = 1

F = TypeVar("F", bound=Callable[..., Any])
FailureReport = BaseException | type | str | None


class CircuitState(Enum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerStats:
    """Cumulative counts over a breaker's life (:meth:`CircuitBreaker.reset` keeps them)."""

    calls: int  # outcomes recorded: successes + failures
    successes: int
    failures: int
    rejections: int  # allow() refused
    opens: int  # transitions into OPEN


class CircuitBreaker:
    """Open after repeated failures, refuse calls for ``reset_timeout`` seconds, then probe."""

    def __init__(
        self,
        failure_threshold: int | None = DEFAULT_FAILURE_THRESHOLD,
        failure_rate: float | None = None,
        window: int | None = None,
        reset_timeout: float = DEFAULT_RESET_TIMEOUT,
        half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS,
        counts: ExceptionSpec = (Exception,),
        ignores: ExceptionSpec = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[CircuitState, CircuitState], Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.failure_threshold = check_int("failure_threshold", failure_threshold, 1, optional=True)
        self.failure_rate = check_fraction("failure_rate", failure_rate, optional=True)
        self.window = check_int("window", window, 1, optional=True)
        if failure_rate is not None and window is None:
            raise invalid_value("window", window, "an int >= 1 when failure_rate is set")
        if window is not None and failure_rate is None:
            raise invalid_value("failure_rate", None, "a number in (0, 1] when window is set")
        if failure_threshold is None and failure_rate is None:
            raise invalid_value(
                "failure_threshold", failure_threshold, "an int >= 1 unless failure_rate is set"
            )
        self.half_open_max_calls = check_int("half_open_max_calls", half_open_max_calls, 1)
        # Not callable is a ValueError here (InvalidArgumentError), as it always was.
        if not callable(clock):
            raise invalid_value("clock", clock, "a callable returning seconds")
        if on_state_change is not None and not callable(on_state_change):
            raise invalid_value("on_state_change", on_state_change, "None or a callable")
        if name is not None and not isinstance(name, str):
            raise invalid_value("name", name, "None or a str")
        self.reset_timeout = check_seconds("reset_timeout", reset_timeout)
        self.counts = exception_types("counts", counts)
        self.ignores = exception_types("ignores", ignores)
        self.clock = clock
        self.on_state_change = on_state_change
        self.name = name
        self._ignored_names = frozenset(
            n for t in self.ignores for n in (t.__name__, f"{t.__module__}.{t.__qualname__}")
        )
        self._lock = threading.Lock()
        self._pending: list[tuple[CircuitState, CircuitState]] = []
        self._state = CircuitState.CLOSED
        self._closed = ClosedWindow(window)  # outcomes of the current CLOSED spell
        self._opened_at = 0.0
        self._trials = 0  # trial slots handed out in this HALF_OPEN spell
        self._trial_successes = 0
        self._calls = self._successes = self._failures = self._rejections = self._opens = 0

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"CircuitBreaker({label}state={self._state.value}, "
            f"failures_in_a_row={self._closed.consecutive}, failure_threshold={self.failure_threshold})"
        )

    # --- reading --------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN circuit whose timeout has passed turns HALF_OPEN here."""
        with self._lock:
            self._refresh()
            state = self._state
            fired = self._take_transitions()
        self._notify(fired)
        return state

    @property
    def stats(self) -> BreakerStats:
        """A snapshot of the cumulative counts."""
        with self._lock:
            return BreakerStats(
                self._calls, self._successes, self._failures, self._rejections, self._opens
            )

    @property
    def failures_until_open(self) -> int | None:
        """While CLOSED, how many more counted failures in a row would open the circuit.

        0 when not CLOSED; None when only a failure rate (no consecutive threshold) applies.
        A dispatcher keeps at most this many calls in flight, so the circuit opens
        after exactly ``failure_threshold`` failing calls, not more.
        """
        with self._lock:
            self._refresh()
            fired = self._take_transitions()
            if self._state is not CircuitState.CLOSED:
                headroom: int | None = 0
            elif self.failure_threshold is None:
                headroom = None
            else:
                headroom = max(1, self.failure_threshold - self._closed.consecutive)
        self._notify(fired)
        return headroom

    def time_until_retry(self) -> float:
        """Seconds until an OPEN circuit admits a trial call; 0.0 when it is not OPEN."""
        with self._lock:
            self._refresh()
            remaining = 0.0
            if self._state is CircuitState.OPEN:
                remaining = max(0.0, self._opened_at + self.reset_timeout - self.clock())
            fired = self._take_transitions()
        self._notify(fired)
        return remaining

    def is_failure(self, error: FailureReport) -> bool | None:
        """Classify a report: True a failure, False a success, None neither (an interrupt)."""
        if error is None:
            return True
        if isinstance(error, str):
            return error not in self._ignored_names
        if isinstance(error, BaseException):
            kind: type = type(error)
        elif isinstance(error, type) and issubclass(error, BaseException):
            kind = error
        else:
            raise invalid_value(
                "error", error, "an exception, an exception class, a type name or None"
            )
        if issubclass(kind, self.ignores):
            return False
        if issubclass(kind, self.counts):
            return True
        return False if issubclass(kind, Exception) else None

    # --- the low-level API ----------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go ahead now; in HALF_OPEN this reserves one trial slot."""
        with self._lock:
            self._refresh()
            if self._state is CircuitState.CLOSED:
                allowed = True
            elif self._state is CircuitState.HALF_OPEN and self._trials < self.half_open_max_calls:
                self._trials += 1
                allowed = True
            else:
                self._rejections += 1
                allowed = False
            fired = self._take_transitions()
        self._notify(fired)
        return allowed

    def release(self) -> None:
        """Give back a trial slot reserved by :meth:`allow` for a call that never finished."""
        with self._lock:
            self._refresh()
            self._give_back_trial()
            fired = self._take_transitions()
        self._notify(fired)

    def record_success(self) -> None:
        """Report a call that succeeded."""
        with self._lock:
            self._refresh()
            self._on_success()
            fired = self._take_transitions()
        self._notify(fired)

    def record_failure(self, error: FailureReport = None) -> bool:
        """Report a call that raised ``error`` (an exception, its class, its type name or None).

        Returns whether it counted as a failure; see the module docstring for what counts.
        """
        verdict = self.is_failure(error)
        with self._lock:
            self._refresh()
            if verdict is None:
                self._give_back_trial()
            elif verdict:
                self._on_failure()
            else:
                self._on_success()
            fired = self._take_transitions()
        self._notify(fired)
        return bool(verdict)

    def reset(self) -> None:
        """Close the circuit and forget recent outcomes (the cumulative stats are kept)."""
        with self._lock:
            self._move(CircuitState.CLOSED)
            self._closed.clear()
            fired = self._take_transitions()
        self._notify(fired)

    # --- the high-level API ---------------------------------------------------

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``func(*args, **kwargs)`` through the breaker; raise CircuitOpenError if refused."""
        if not self.allow():
            raise self._open_error(self.name or getattr(func, "__qualname__", None))
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(exc)
            raise
        self.record_success()
        return result

    def __call__(self, func: F) -> F:
        """Use the breaker as a decorator: every call of ``func`` goes through :meth:`call`."""

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.call(func, *args, **kwargs)

        return guarded  # type: ignore[return-value]

    def __enter__(self) -> CircuitBreaker:
        if not self.allow():
            raise self._open_error(self.name)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.record_success()
        else:
            self.record_failure(exc)

    # --- pickling -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = self.__dict__.copy()
        del state["_lock"]
        state["_pending"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- internals (called with the lock held) --------------------------------

    def _refresh(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self.clock() - self._opened_at >= self.reset_timeout
        ):
            self._move(CircuitState.HALF_OPEN)

    def _on_success(self) -> None:
        self._calls += 1
        self._successes += 1
        if self._state is CircuitState.CLOSED:
            self._closed.add(False)
        elif self._state is CircuitState.HALF_OPEN and self._trial_successes < self._trials:
            self._trial_successes += 1
            if self._trial_successes >= self.half_open_max_calls:
                self._move(CircuitState.CLOSED)

    def _give_back_trial(self) -> None:
        if self._state is CircuitState.HALF_OPEN and self._trials > self._trial_successes:
            self._trials -= 1

    def _on_failure(self) -> None:
        self._calls += 1
        self._failures += 1
        if self._state is CircuitState.CLOSED:
            self._closed.add(True)
            if self._closed.tripped(self.failure_threshold, self.failure_rate):
                self._move(CircuitState.OPEN)
        elif self._state is CircuitState.HALF_OPEN:
            self._move(CircuitState.OPEN)

    def _move(self, new: CircuitState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if new is CircuitState.OPEN:
            self._opened_at = self.clock()
            self._opens += 1
        self._trials = self._trial_successes = 0
        self._closed.clear()
        self._pending.append((old, new))

    def _take_transitions(self) -> list[tuple[CircuitState, CircuitState]]:
        fired, self._pending = self._pending, []
        return fired

    # --- internals (called without the lock) ----------------------------------

    def _notify(self, fired: list[tuple[CircuitState, CircuitState]]) -> None:
        if self.on_state_change is not None:
            for old, new in fired:
                self.on_state_change(old, new)

    def _open_error(self, label: str | None) -> CircuitOpenError:
        wait = self.time_until_retry()
        who = f"circuit breaker {label!r}" if label else "circuit breaker"
        if wait > 0:
            detail = f"is open; retry in {wait:.3g}s"
        else:
            detail = f"is half-open and its {self.half_open_max_calls} trial call(s) are running"
        error = CircuitOpenError(f"{who} {detail}")
        error.breaker = label  # type: ignore[attr-defined]
        error.retry_after = wait  # type: ignore[attr-defined]
        return error
