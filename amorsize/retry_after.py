"""How long a failed call asks us to wait: Retry-After from an exception.

A server that sheds load says when to come back, in a ``Retry-After`` header
(RFC 9110 §10.2.3): either a number of seconds or an HTTP date. Clients carry it
on their errors in a few shapes, and :func:`retry_after_seconds` reads all of them:

* an attribute ``exc.retry_after`` holding seconds (a number) or a header value;
* ``exc.response.headers["Retry-After"]``, as ``requests.HTTPError`` and
  ``httpx.HTTPStatusError`` carry;
* ``exc.headers["Retry-After"]``, as ``urllib.error.HTTPError`` carries.

Anything unreadable (a garbled header, a negative or non-finite number) counts as
absent, so the caller falls back to its own backoff rather than failing.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Any, Callable

__all__ = ["parse_retry_after", "retry_after_seconds"]

#: The header name; header mappings in the wild are case-insensitive, plain dicts are not.
HEADER = "Retry-After"


def parse_retry_after(value: Any, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait for a Retry-After value (seconds or HTTP date), or None if unreadable.

    ``now`` is the wall clock (an HTTP date is wall-clock time); a date in the past
    means "now", 0 seconds.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return parse_retry_after(float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        return None
    return max(0.0, when.timestamp() - now())


def _header(headers: Any) -> Any:
    """The Retry-After value of a header mapping, whatever its case handling."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    try:
        value = get(HEADER)
        if value is None:
            value = get(HEADER.lower())
    except Exception:  # a foreign mapping misbehaving must not mask the real error
        return None
    return value


def retry_after_seconds(exc: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds ``exc`` asks the caller to wait before trying again, or None if it does not say."""
    value = getattr(exc, "retry_after", None)
    if value is not None:
        seconds = parse_retry_after(value, now)
        if seconds is not None:
            return seconds
    for holder in (getattr(exc, "response", None), exc):
        if holder is None:
            continue
        seconds = parse_retry_after(_header(getattr(holder, "headers", None)), now)
        if seconds is not None:
            return seconds
    return None
