"""Event-loop plumbing for ``async def`` functions: detection, one loop per thread, a watchdog.

Every runner that meets a coroutine function (a worker process, a worker
thread, the caller's thread) runs it on the event loop of *its own thread*:
:func:`thread_loop` keeps one per thread for the thread's life, so connection
pools a function caches on the loop (an ``httpx.AsyncClient``) are reused from
chunk to chunk. :func:`run_coroutine` refuses nothing: called where a loop is
already running (``execute()`` from inside ``async`` code, a notebook), it runs
the coroutine on a helper thread instead of failing.

A blocking call inside a coroutine (``time.sleep``, a sync HTTP client) stalls
every item of that loop: it is the user's bug, and :func:`watch_loop` says so,
once per process, when the loop was blocked for more than
:data:`BLOCKED_LOOP_SECONDS`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import types
import warnings
from typing import Any, Callable, Coroutine, TypeVar

from amorsize.errors import BlockedLoopWarning

#: How often the watchdog task wakes to measure the loop's lag (seconds); cheap:
#: one timer per loop, not per item.
HEARTBEAT_SECONDS = 0.1
#: A wake-up later than this (seconds) means something blocked the loop: warn.
BLOCKED_LOOP_SECONDS = 1.0

T = TypeVar("T")
_local = threading.local()
_warned = False


def is_async_callable(func: Any) -> bool:
    """Whether calling ``func`` returns a coroutine: an ``async def``, through partials and limits."""
    if type(func) is types.FunctionType and not (
            func.__code__.co_flags & inspect.CO_COROUTINE or func.__dict__):
        # The usual case, a plain ``def`` with no attributes (no coroutine mark from
        # inspect.markcoroutinefunction, no RateLimit wrapper's): answered without
        # inspect's unwrapping, which costs more than a short in-process run.
        return False
    seen = 0
    while seen < 16:  # wrappers of wrappers; bounded, a cycle of __wrapped__ is possible
        seen += 1
        if inspect.iscoroutinefunction(func):
            return True
        if isinstance(func, functools.partial):
            func = func.func
            continue
        if getattr(func, "_amorsize_async", False):  # a RateLimit-wrapped coroutine function
            return True
        # An object whose class defines ``async def __call__``.
        method = type(func).__dict__.get("__call__") if not inspect.isfunction(func) else None
        return inspect.iscoroutinefunction(method)
    return False


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, created on first use and kept (closed with the thread's locals)."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, on this thread's loop (see module doc)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(coro)
    box: dict[str, Any] = {}

    def helper() -> None:
        try:
            box["value"] = _run_here(coro)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=helper, name="amorsize-loop", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _run_here(coro: Coroutine[Any, Any, T]) -> T:
    loop = thread_loop()
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    except BaseException:
        # Ctrl-C (or an error) left the task half-way: cancel it now, so no item of it
        # resumes the next time this thread's loop runs.
        if not task.done():
            task.cancel()
            try:
                loop.run_until_complete(task)
            except BaseException:
                pass
        raise


def as_sync(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` itself, or, for a coroutine function, a function running it to completion."""
    if not is_async_callable(func):
        return func
    return SyncCall(func)


class SyncCall:
    """A coroutine function called synchronously (serial replay, the CLI); pickles if ``func`` does."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return run_coroutine(self.func(*args, **kwargs))


async def watch_loop() -> None:
    """Run until cancelled; warn (once per process) when the loop was blocked too long."""
    global _warned
    loop = asyncio.get_running_loop()
    while not _warned:
        before = loop.time()
        await asyncio.sleep(HEARTBEAT_SECONDS)
        lag = loop.time() - before - HEARTBEAT_SECONDS
        if lag > BLOCKED_LOOP_SECONDS and not _warned:
            _warned = True
            warnings.warn(
                f"the event loop was blocked for {lag:.1f}s: a blocking call (time.sleep, a "
                "sync client, heavy CPU) inside the async function stalls every item in "
                "flight; use its async variant, or asyncio.to_thread",
                BlockedLoopWarning, stacklevel=1,
            )


def reset_blocked_warning() -> None:
    """Let :func:`watch_loop` warn again (for tests)."""
    global _warned
    _warned = False
