"""A dependency-free async GET for the tests: asyncio streams, HTTP/1.0, the status code."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HTTPStatusError(Exception):
    """The service answered something other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def aget(url: str) -> int:
    """GET ``url`` without blocking the loop; the status code (raises HTTPStatusError unless 200)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        await reader.read()
    finally:
        writer.close()
    if status != 200:
        raise HTTPStatusError(status)
    return status
