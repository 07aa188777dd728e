"""RateLimit: one call rate and one concurrency cap for every process that shares it.

```
 creating process                          any process holding the limiter (fork, spawn,
 RateLimit(50, per=1.0)                    forkserver, loky; by pickle or by re-import)
   │ mkdtemp 0700 (/dev/shm)                 │
   ▼                                         ▼
 amorsize-pacing-XXXX/ ◄───── path ─────── limit.acquire(deadline)
   state   GCRA: one "theoretical            1. take a max_concurrent slot (flock, polled)
           arrival time" + paused-until      2. reserve a start time under flock on state
   slot-i  flock = one running call          3. sleep until it, holding no lock
   │                                         4. run the call; Permit.release() frees the slot
   └─ removed by the creator (finalizer)
```

Three ways in, all the same limit: ``limit.acquire(deadline)`` returns a
:class:`Permit`; ``with limit:`` wraps a block; ``@limit`` / ``limit(func)`` wraps
a function in a picklable :class:`Limited`. Each attempt is a call, so retries
count against the rate.

How a worker finds the state: a pickled limiter carries the directory's path. A
limiter created at module level is also found by *where it was created*: the
creating process names its directory in an environment variable keyed by file,
line and parameters, and a child process (spawn, forkserver, loky re-importing the
module) that builds the same limiter at the same line attaches to it instead of
making its own. A decorated module-level function pickles by reference and
re-binds to the pickled limiter's state when unpickled.

Clocks: ``clock`` must be one clock for every process (``time.monotonic`` is, on
Linux), because start times are compared across processes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import multiprocessing.util
import os
import sys
import threading
import time
from typing import Any, Callable, Optional, Tuple

import psutil

from amorsize import _pace_state, _pacing_aio
from amorsize._aio import is_async_callable
from amorsize._validate import check_callable, check_int, check_seconds
from amorsize.errors import RateLimitTimeoutError

__all__ = ["Limited", "Permit", "RateLimit"]

#: Environment variable prefix naming a creation site's state: ``<prefix><hash>=<pid>:<path>``.
ENV_PREFIX = "AMORSIZE_PACING_"
#: Polling a busy ``max_concurrent`` starts this often (seconds) and backs off to
#: ``SLOT_POLL_MAX``: flock cannot wait with a timeout, and a deadline must be kept.
SLOT_POLL_MIN = 0.0005
SLOT_POLL_MAX = 0.01

#: What identifies a limit: calls, per, burst, max_concurrent.
Params = Tuple[int, float, Optional[int], Optional[int]]

#: Serialises a process's first use of a limiter (rare: once per limiter per process).
#: Re-created after a fork, in case a thread held it when the process forked.
_OPENING = threading.Lock()


#: This process's id, kept up to date at fork: the hot path compares it on every call,
#: and ``os.getpid()`` is a system call (about 1-5 us in a sandboxed container).
_PID = os.getpid()


def _reset_after_fork() -> None:
    global _OPENING, _PID
    _OPENING = threading.Lock()
    _PID = os.getpid()


os.register_at_fork(after_in_child=_reset_after_fork)


class Permit:
    """The right to run one call; :meth:`release` (or leaving ``with``) frees its slot."""

    __slots__ = ("_slot", "_state")

    def __init__(self, state: _pace_state.ProcessState, slot: int | None) -> None:
        self._state = state
        self._slot = slot

    def release(self) -> None:
        """Give back the concurrency slot, if any; releasing twice is harmless."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._state.release_slot(slot)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class RateLimit:
    """At most ``calls`` call starts per ``per`` seconds and ``max_concurrent`` running, across processes.

    ``burst=None`` spaces calls evenly, ``per / calls`` apart. ``burst=b`` lets up to
    ``b`` start at once after an idle period; a window of ``per`` seconds then holds
    at most ``calls + b - 1`` starts.
    """

    def __init__(
        self,
        calls: int,
        per: float = 1.0,
        burst: int | None = None,
        max_concurrent: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.calls = check_int("calls", calls, 1)
        self.per = check_seconds("per", per, positive=True)
        self.burst = check_int("burst", burst, 1, optional=True)
        self.max_concurrent = check_int("max_concurrent", max_concurrent, 1, optional=True)
        self.clock = check_callable("clock", clock, "a callable returning seconds")
        self.sleep = check_callable("sleep", sleep, "a callable taking seconds")
        self._interval = self.per / self.calls
        self._tau = ((self.burst or 1) - 1) * self._interval
        self._path: str | None = None
        self._local: _ProcessLocal | None = None
        self._threads = threading.local()
        self._site = _site_key(self._params(), sys._getframe(1))
        path = _inherited_path(self._site)
        if path is not None:
            self._path = path
        elif multiprocessing.parent_process() is None:
            self._create()
        # else: a worker re-importing a module whose limiter it could not find: make
        # the state on first use only, so an unused copy leaves nothing behind.

    # --- the public surface ---------------------------------------------------------

    def acquire(self, deadline: float | None = None) -> Permit:
        """Wait (sleeping, holding no lock) until a call may start; raise if ``deadline`` comes first.

        ``deadline`` is a time on this limiter's ``clock``. Raises
        :class:`~amorsize.errors.RateLimitTimeoutError` when the call could not start by then.
        """
        state = self._process_state()
        slot = self._take_slot(state, deadline) if self.max_concurrent is not None else None
        try:
            while True:
                start = state.reserve(self.clock(), self._interval, self._tau, deadline)
                if start is None:
                    raise RateLimitTimeoutError(f"{self!r}: no start before the deadline {deadline!r}")
                delay = start - self.clock()
                if delay <= 0:
                    return Permit(state, slot)
                self.sleep(delay)
                # A pause that began while we slept (a Retry-After) voids the booking.
                if state.paused_until() <= self.clock():
                    return Permit(state, slot)
        except BaseException:
            if slot is not None:
                state.release_slot(slot)
            raise

    async def acquire_async(self, deadline: float | None = None) -> Permit:
        """:meth:`acquire` for coroutines: awaits ``asyncio.sleep``, never blocks the loop."""
        return await _pacing_aio.acquire_async(self, deadline, Permit, (SLOT_POLL_MIN, SLOT_POLL_MAX))

    def pause_until(self, until: float) -> None:
        """Let no call of any process start before ``until`` (a time on ``clock``)."""
        self._process_state().pause_until(check_seconds("until", until, optional=False))

    def pause(self, seconds: float) -> None:
        """Let no call of any process start for ``seconds`` from now (a Retry-After)."""
        self.pause_until(self.clock() + check_seconds("seconds", seconds))

    def close(self) -> None:
        """Close this process's handles; in the creating process also delete the state."""
        local, self._local = self._local, None
        if local is not None and local.pid == os.getpid():
            local.close()
        if local is not None and local.finalizer is not None:
            local.finalizer()

    def __call__(self, func: Callable[..., Any]) -> Limited:
        """Decorate ``func``: each call waits for this limit. The wrapper pickles."""
        return Limited(self, func)

    def __enter__(self) -> Permit:
        permit = self.acquire()
        self._permits().append(permit)
        return permit

    def __exit__(self, *exc_info: object) -> None:
        self._permits().pop().release()

    def __repr__(self) -> str:
        parts = [f"calls={self.calls!r}", f"per={self.per!r}"]
        if self.burst is not None:
            parts.append(f"burst={self.burst!r}")
        if self.max_concurrent is not None:
            parts.append(f"max_concurrent={self.max_concurrent!r}")
        return f"RateLimit({', '.join(parts)})"

    def __reduce__(self) -> Any:
        return (_attach, (self._params(), self.path, self.clock, self.sleep))

    @property
    def path(self) -> str:
        """The shared state directory (created on first use in a worker)."""
        if self._path is None:
            self._create()
        assert self._path is not None
        return self._path

    # --- internals ------------------------------------------------------------------

    def _params(self) -> Params:
        return (self.calls, self.per, self.burst, self.max_concurrent)

    def _create(self) -> None:
        """Make the state directory here; this process owns it and deletes it at exit."""
        path = _pace_state.create_state(self.max_concurrent or 0)
        self._path = path
        os.environ[self._site] = f"{os.getpid()}:{path}"
        self._local = _ProcessLocal(
            path,
            self.max_concurrent or 0,
            multiprocessing.util.Finalize(
                self, _remove_owned, (path, os.getpid(), self._site), exitpriority=0
            ),
        )

    def _process_state(self) -> _pace_state.ProcessState:
        """This process's open handles, opened again after a fork (flocks must not be shared)."""
        local = self._local
        if local is None or local.pid != _PID:
            with _OPENING:
                local = self._local
                if local is None or local.pid != _PID:
                    local = self._local = _ProcessLocal(self.path, self.max_concurrent or 0, None)
        return local.state

    def _take_slot(self, state: _pace_state.ProcessState, deadline: float | None) -> int:
        """A ``max_concurrent`` slot, polling with capped backoff until ``deadline``."""
        poll = SLOT_POLL_MIN
        while True:
            slot = state.try_slot()
            if slot is not None:
                return slot
            now = self.clock()
            if deadline is not None and now >= deadline:
                raise RateLimitTimeoutError(f"{self!r}: no free slot before the deadline {deadline!r}")
            self.sleep(poll if deadline is None else min(poll, deadline - now))
            poll = min(poll * 2, SLOT_POLL_MAX)

    def _permits(self) -> list[Permit]:
        stack = getattr(self._threads, "stack", None)
        if stack is None:
            stack = self._threads.stack = []
        return stack

    def _adopt(self, other: RateLimit) -> bool:
        """Share ``other``'s state if this limiter has none of its own yet (a re-imported copy)."""
        if self._params() != other._params():
            return False
        if self._path is None or self._path == other._path:
            self._path = other.path
            return True
        return False


class _ProcessLocal:
    """A limiter's handles in one process, and the finalizer if this process created the state."""

    def __init__(self, path: str, slots: int, finalizer: Any) -> None:
        self.pid = os.getpid()
        self.finalizer = finalizer
        self._path = path
        self._slots = slots
        self._state: _pace_state.ProcessState | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the handles if they were ever opened."""
        state, self._state = self._state, None
        if state is not None:
            state.close()

    @property
    def state(self) -> _pace_state.ProcessState:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    self._state = _pace_state.ProcessState(self._path, self._slots)
        return self._state


class Limited:
    """``func`` wrapped so each call waits for its :class:`RateLimit`; pickles by value or by name."""

    def __init__(self, limit: RateLimit, func: Callable[..., Any]) -> None:
        functools.update_wrapper(self, check_callable("func", func))
        # After update_wrapper: wrapping a Limited copies its __dict__, limit included.
        self.limit = limit
        self.__wrapped__ = func
        #: Wrapping an ``async def``: calls return a coroutine that awaits the limit.
        self._amorsize_async = is_async_callable(func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._amorsize_async:
            return _pacing_aio.limited_call(self, args, kwargs)
        with self.limit.acquire():
            return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Limited({self.limit!r}, {self.__wrapped__!r})"

    def __reduce__(self) -> Any:
        module = getattr(self, "__module__", None)
        qualname = getattr(self, "__qualname__", None)
        if module and qualname and "<locals>" not in qualname and _lookup(module, qualname) is self:
            # Decorated at module level: the function's own name leads to this wrapper,
            # so the function cannot pickle by name; the wrapper does.
            return (_rebind, (self.limit, module, qualname))
        return (Limited, (self.limit, self.__wrapped__))


# --- pickling and finding state by creation site -----------------------------------------


def _attach(params: Params, path: str, clock: Any, sleep: Any) -> RateLimit:
    """Unpickle a limiter: the same parameters on the sender's state directory."""
    limit = RateLimit.__new__(RateLimit)
    calls, per, burst, max_concurrent = params
    limit.calls, limit.per, limit.burst, limit.max_concurrent = calls, per, burst, max_concurrent
    limit.clock, limit.sleep = clock, sleep
    limit._interval = per / calls
    limit._tau = ((burst or 1) - 1) * limit._interval
    limit._path, limit._local, limit._site = path, None, ""
    limit._threads = threading.local()
    return limit


def _rebind(limit: RateLimit, module: str, qualname: str) -> Limited:
    """Unpickle a module-level decorated function: this process's copy, on the sender's state."""
    found = _lookup(module, qualname)
    if isinstance(found, Limited) and found.limit._adopt(limit):
        return found
    if isinstance(found, Limited):
        return Limited(limit, found.__wrapped__)
    raise LookupError(f"{module}.{qualname} is not a function decorated with a RateLimit here")


def _lookup(module: str, qualname: str) -> Any:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _site_key(params: tuple[Any, ...], frame: Any) -> str:
    """The environment key of a creation site: file, line and parameters."""
    where = f"{os.path.abspath(frame.f_code.co_filename)}:{frame.f_lineno}:{params!r}"
    return ENV_PREFIX + hashlib.sha1(where.encode()).hexdigest()[:16].upper()


def _inherited_path(key: str) -> str | None:
    """The state an ancestor process made at this creation site, if it still exists."""
    value = os.environ.get(key)
    if not value:
        return None
    pid_text, _, path = value.partition(":")
    try:
        pid = int(pid_text)
        if pid == os.getpid() or not os.path.isdir(path):
            return None
        ancestors = {p.pid for p in psutil.Process().parents()}
    except (ValueError, psutil.Error):
        return None
    return path if pid in ancestors else None


def _remove_owned(path: str, owner: int, key: str) -> None:
    """Finalizer of the creating process: delete the state and forget the creation site."""
    if os.getpid() != owner:  # a forked child holds a copy of this finalizer: not its state
        return
    if os.environ.get(key, "").endswith(":" + path):
        del os.environ[key]
    _pace_state.remove_state(path)

