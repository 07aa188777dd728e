"""The journal line of a worker's failure, written quickly (issue 18).

Every failure a ``capture()`` hook records costs its worker one journal line. In the
usual case (a small int or ASCII str item, flat metadata: attempts, pid, host,
function) :func:`plain_line` writes the line that
:func:`amorsize.dlq.records.encode_entry` would, byte for byte (a property test
checks it), field by field with the JSON encoder's own C quoting and with the
metadata's text reused, in about a third of the time; anything else returns None
and takes the general path.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict, List, Tuple

from amorsize.dlq.entry import DLQEntry, error_message, new_entry_id, qualified_type_name
from amorsize.tracebacks import traceback_parts

_encoder = json.JSONEncoder(separators=(",", ":"))  # records' settings
_quoted = json.encoder.encode_basestring_ascii  # the encoder's own C function for text
#: Encoded metadata by items and types: a worker's failures repeat the same few. Bounded.
_META_CACHE_SIZE = 256
_meta_texts: Dict[Tuple[Any, ...], Tuple[Tuple[type, ...], str]] = {}


def plain_line(entry: DLQEntry, version: int) -> bytes | None:
    """``encode_entry``'s line (record ``version``), byte for byte, or None when
    ``entry`` is not one this function writes."""
    item_text, stamp = _item_text(entry.item), entry.timestamp
    if item_text is None:
        return None
    meta_text = _meta_text(entry.metadata)
    if meta_text is None or type(stamp) is not float or not math.isfinite(stamp) or type(
            entry.retry_count) is not int:
        return None
    try:
        return _line(entry.entry_id, version, entry.error_type, entry.error_qualname,
                     entry.error_message, entry.reason, float.__repr__(stamp), entry.retry_count,
                     item_text, meta_text, "null" if entry.traceback is None else _quoted(entry.traceback))
    except TypeError:  # a text field that is not text: the generic path encodes it as it is
        return None


def failure_line(
    item: Any, error: BaseException, retry_count: int, meta_text: str, include_traceback: bool,
    version: int,
) -> Tuple[bytes, str, str, str] | None:
    """The line of a worker's failure, as ``encode_entry(failure_entry(item, error, ...))``
    writes it (``meta_text``: its metadata, encoded), built without the entry; with its
    entry id, error type and message. None when ``item`` is not a small int or ASCII str.

    A capture hook's failure path: the entry, its metadata dict and a second pass over
    them cost ~7 us per failure that this skips (a property test checks the bytes).
    """
    item_text = _item_text(item)
    if item_text is None:
        return None
    kind = type(error)
    now_ns = time.time_ns()
    entry_id, message = new_entry_id(now_ns), error_message(error)
    trace = _quoted_parts(traceback_parts(error)) if include_traceback else "null"
    line = _line(entry_id, version, kind.__name__, qualified_type_name(kind), message, "exception",
                 _seconds_text(now_ns), retry_count, item_text, meta_text, trace)
    return line, entry_id, kind.__name__, message


def _seconds_text(now_ns: int) -> str:
    """The time in seconds to the microsecond, as ``repr`` of the float it parses to.

    Written from the integers: ``repr(now_ns / 1e9)`` costs a fifth of the line. Below
    2**32 s (the year 2106) floats are closer than a microsecond apart, so this decimal
    is the shortest that parses to its float: the text ``repr`` gives it.
    """
    seconds, micros = divmod(now_ns // 1000, 1_000_000)
    if not 0 < seconds < _EXACT_SECONDS:  # repr writes 1e-06 below 1e-4: not worth it
        return float.__repr__(micros / 1e6 + seconds)
    return f"{seconds}.{micros:06d}".rstrip("0") if micros else f"{seconds}.0"


_EXACT_SECONDS = 2**32


def _quoted_parts(parts: List[str] | None) -> str:
    """JSON text of ``"".join(parts)``, from each part's escaped text, kept per part.

    Quoting escapes each character alone, so the parts' escapes joined are the whole's.
    A traceback's frames repeat from failure to failure: quoting its ~500 characters
    anew was a sixth of a failure line's cost.
    """
    if parts is None:
        return "null"
    out = ['"']
    for part in parts:
        escaped = _escaped.get(part)
        if escaped is None:
            escaped = _quoted(part)[1:-1]
            if part.startswith(_RECURRING_PARTS):
                # Frames and the header recur; a message (of any size) rarely does.
                if len(_escaped) >= _ESCAPED_CACHE_SIZE:
                    _escaped.clear()
                _escaped[part] = escaped
        out.append(escaped)
    out.append('"')
    return "".join(out)


_ESCAPED_CACHE_SIZE = 4096
#: The traceback parts whose escapes are kept: frames and the header.
_RECURRING_PARTS = ('  File "', "Traceback (most")
_escaped: Dict[str, str] = {}


def _item_text(item: Any) -> str | None:
    kind = type(item)
    if kind is int and item.bit_length() <= 63:
        return int.__repr__(item)
    if kind is str and item.isascii():
        return _quoted(item)
    return None


def _line(entry_id: str, version: int, error_type: str, qualname: str | None, message: str,
          reason: str, stamp: str, retry_count: int, item_text: str, meta_text: str,
          trace: str) -> bytes:
    return "".join((
        '{"entry_id":', _quoted(entry_id), ',"v":', int.__repr__(version), ',"error_type":',
        _quoted(error_type), ',"error_qualname":', "null" if qualname is None else _quoted(qualname),
        ',"error_message":', _quoted(message), ',"reason":', _quoted(reason),
        ',"timestamp":', stamp, ',"retry_count":', int.__repr__(retry_count),
        ',"item_codec":"json","item":', item_text, ',"metadata_codec":"json","metadata":',
        meta_text, ',"traceback":', trace, "}\n",
    )).encode("ascii")


def meta_text(meta: Any) -> str | None:
    """The JSON of flat metadata, as :func:`plain_line` writes it, or None (module doc)."""
    return _meta_text(meta)


def _meta_text(meta: Any) -> str | None:
    """The JSON of flat metadata (ASCII str keys; ASCII str or 63-bit int values), else None."""
    if type(meta) is not dict:
        return None
    try:
        key = tuple(meta.items())
        cached = _meta_texts.get(key)
    except TypeError:  # an unhashable value: not flat
        return None
    types = tuple(map(type, meta.values()))  # 1 == True: the types tell them apart
    if cached is not None and cached[0] == types:
        return cached[1]
    for name, value in key:
        kind = type(value)
        if type(name) is not str or not name.isascii() or not (
                (kind is str and value.isascii()) or (kind is int and value.bit_length() <= 63)):
            return None
    if len(_meta_texts) >= _META_CACHE_SIZE:
        _meta_texts.clear()
    text = _encoder.encode(meta)
    _meta_texts[key] = (types, text)
    return text
