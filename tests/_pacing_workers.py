"""Module-level functions for the pacing tests' pools: a spawned worker imports them by name.

``LIMIT`` is built at import, as a user's module would: the test process creates its
state; a spawned or forkserver worker re-importing this module attaches to it (by
creation site, or when the decorated function is unpickled).
"""

from __future__ import annotations

import os
import time
from typing import Any

from _http_service import fetch, get

from amorsize.pacing import RateLimit

#: The rate every pool test shares: 40 calls/s, evenly spaced.
RATE = 40
LIMIT = RateLimit(RATE, per=1.0)


@LIMIT
def limited_get(url: str) -> tuple[float, int]:
    """GET ``url`` once the shared limit allows: (start time, status)."""
    start = time.monotonic()
    return start, get(url)


def get_inside_with(url: str) -> tuple[float, int]:
    """The context-manager form on the module-level limiter."""
    with LIMIT:
        start = time.monotonic()
        return start, get(url)


def timed_get(url: str) -> tuple[float, int]:
    """A plain function, wrapped by the test with ``limit(timed_get)``."""
    start = time.monotonic()
    return start, get(url)


def hold(seconds: float) -> tuple[float, float]:
    """Occupy a call for ``seconds``: its (start, end) on the shared clock."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def acquire_then_die(limit: RateLimit, ready: Any) -> None:
    """Take a concurrency slot, say so, then die holding it (no cleanup runs)."""
    limit.acquire()
    ready.set()
    time.sleep(0.2)
    os._exit(3)


def state_path(_: Any) -> str:
    """Which state directory this worker's module-level limiter uses."""
    return LIMIT.path


def fetch_ok(url: str) -> float:
    """GET ``url``, raising ``HTTPError`` (Retry-After included) for a 429 or 500: its start time."""
    start = time.monotonic()
    fetch(url)
    return start


def broken(item: Any) -> Any:
    """A broken deployment: every call fails."""
    raise RuntimeError(f"broken deployment (item {item!r})")
