"""Argument checks shared by every policy and entry point.

Each check names the argument, the value it got and what it accepts, and raises
an :class:`~amorsize.InvalidArgumentError` (a ``ValueError``) or an
:class:`~amorsize.InvalidTypeError` (a ``TypeError``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import Any

from amorsize.errors import InvalidArgumentError, InvalidTypeError

ExceptionTypes = tuple[type[BaseException], ...]


def invalid_value(name: str, value: Any, accepted: str) -> InvalidArgumentError:
    """Build the standard validation error: names the field, the value and what is accepted."""
    return InvalidArgumentError(f"{name}={value!r} is not valid; expected {accepted}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`InvalidArgumentError` unless ``value`` is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise invalid_value(name, value, "one of " + ", ".join(repr(c) for c in options))


def check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> Any:
    """Return ``value`` if it is an int (not a bool) >= ``minimum`` (or None when optional)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepted = f"an int >= {minimum}"
        raise invalid_value(name, value, f"None or {accepted}" if optional else accepted)
    return value


def check_seconds(name: str, value: Any, *, positive: bool = False, optional: bool = False) -> Any:
    """Return ``value`` as a float if it is a finite number of seconds (> 0 when ``positive``)."""
    if optional and value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (value <= 0 if positive else value < 0)
    ):
        accepted = "a finite number of seconds > 0" if positive else "a non-negative finite number of seconds"
        raise invalid_value(name, value, f"None or {accepted}" if optional else accepted)
    return float(value)


def check_type(name: str, value: Any, types: Any, accepted: str, *, optional: bool = False) -> Any:
    """Return ``value`` if it is an instance of ``types`` (or None when optional)."""
    if (optional and value is None) or isinstance(value, types):
        return value
    raise InvalidTypeError(f"{name}={value!r} is not valid; expected {accepted}")


def check_callable(name: str, value: Any, accepted: str = "a callable", *, optional: bool = False) -> Any:
    """Return ``value`` if it is callable (or None when optional)."""
    if (optional and value is None) or callable(value):
        return value
    raise InvalidTypeError(f"{name}={value!r} is not valid; expected {accepted}")


def exception_types(name: str, value: Any) -> ExceptionTypes:
    """Normalise an exception class or a tuple (or list) of them to a tuple."""
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, type) and issubclass(v, BaseException) for v in value
    ):
        return tuple(value)
    raise invalid_value(name, value, "an exception class or a tuple of exception classes")


def check_iterable(name: str, value: Any) -> Any:
    """Return ``value`` if ``iter()`` accepts it (without consuming anything)."""
    try:
        iter(value)
    except TypeError:
        raise InvalidTypeError(f"{name}={value!r} is not valid; expected an iterable") from None
    return value


def check_fraction(name: str, value: Any, *, optional: bool = False) -> Any:
    """Return ``value`` as a float if it is a number in (0, 1] (or None when optional)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        accepted = "a number in (0, 1]"
        raise invalid_value(name, value, f"{accepted} or None" if optional else accepted)
    return float(value)


def check_timestamp(name: str, value: Any) -> float | None:
    """Return ``value`` as POSIX seconds: None, a number (not a bool) or a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise invalid_value(name, value, "None, a POSIX timestamp (float) or a datetime")


def check_bool(name: str, value: Any, *, optional: bool = False) -> Any:
    """Return ``value`` if it is True or False (or None when optional)."""
    if (optional and value is None) or isinstance(value, bool):
        return value
    raise invalid_value(name, value, "True, False or None" if optional else "True or False")
