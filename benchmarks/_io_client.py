"""The functions bench_io.py maps: one GET with httpx, sync and async.

In their own module so that worker processes import them by name (a function of
``__main__`` would be pickled by value, with the client it closes over).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict

import httpx

#: Connections per client: the width of the thread rows and the concurrency of the async ones.
MAX_THREADS = 64
MAX_CONCURRENCY = 100

_sync_client: httpx.Client | None = None
_async_clients: Dict[Any, httpx.AsyncClient] = {}
_lock = threading.Lock()


def client() -> httpx.Client:
    """This process's client, shared by its threads (httpx.Client is thread-safe)."""
    global _sync_client
    with _lock:
        if _sync_client is None:
            _sync_client = httpx.Client(limits=httpx.Limits(max_connections=MAX_THREADS), timeout=30)
    return _sync_client


def async_client() -> httpx.AsyncClient:
    """This event loop's client (a client belongs to the loop it was first used on)."""
    loop = asyncio.get_running_loop()
    found = _async_clients.get(loop)
    if found is None:
        found = _async_clients[loop] = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=MAX_CONCURRENCY), timeout=30)
    return found


def fetch(url: str) -> int:
    response = client().get(url)
    response.raise_for_status()
    return response.status_code


async def afetch(url: str) -> int:
    response = await async_client().get(url)
    response.raise_for_status()
    return response.status_code


def safe_fetch(url: str) -> Any:
    """``fetch`` for the bare rows: the error as the value, as a DLQ would keep it."""
    try:
        return fetch(url)
    except httpx.HTTPStatusError as exc:
        return exc
