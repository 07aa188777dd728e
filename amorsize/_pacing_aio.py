"""RateLimit for coroutines: acquire a permit by awaiting, never blocking the event loop.

The same shared state and the same two steps as :meth:`RateLimit.acquire` (take a
``max_concurrent`` slot, then reserve a start time), with ``asyncio.sleep`` in
place of ``time.sleep``: a hundred items of one loop waiting for the limit cost
one timer each, and the other items keep running.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from amorsize.errors import RateLimitTimeoutError

if TYPE_CHECKING:
    from amorsize.pacing import Limited, Permit, RateLimit


async def acquire_async(
    limit: RateLimit, deadline: float | None, permit: type[Permit], poll_bounds: tuple[float, float]
) -> Permit:
    """Await until a call may start under ``limit``; raise RateLimitTimeoutError after ``deadline``.

    ``permit`` and ``poll_bounds`` come from :mod:`amorsize.pacing` (which imports this module).
    """
    Permit, (SLOT_POLL_MIN, SLOT_POLL_MAX) = permit, poll_bounds
    state = limit._process_state()
    slot = None
    if limit.max_concurrent is not None:
        poll = SLOT_POLL_MIN
        while (slot := state.try_slot()) is None:
            now = limit.clock()
            if deadline is not None and now >= deadline:
                raise RateLimitTimeoutError(f"{limit!r}: no free slot before the deadline {deadline!r}")
            await asyncio.sleep(poll if deadline is None else min(poll, deadline - now))
            poll = min(poll * 2, SLOT_POLL_MAX)
    try:
        while True:
            start = state.reserve(limit.clock(), limit._interval, limit._tau, deadline)
            if start is None:
                raise RateLimitTimeoutError(f"{limit!r}: no start before the deadline {deadline!r}")
            delay = start - limit.clock()
            if delay <= 0:
                return Permit(state, slot)
            await asyncio.sleep(delay)
            if state.paused_until() <= limit.clock():  # no Retry-After pause began meanwhile
                return Permit(state, slot)
    except BaseException:
        if slot is not None:
            state.release_slot(slot)
        raise


async def limited_call(wrapper: Limited, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One call of a RateLimit-decorated coroutine function."""
    permit = await wrapper.limit.acquire_async()
    try:
        return await wrapper.__wrapped__(*args, **kwargs)
    finally:
        permit.release()
