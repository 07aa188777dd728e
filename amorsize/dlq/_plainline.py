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
from typing import Any, Dict, Tuple

from amorsize.dlq.entry import DLQEntry

_encoder = json.JSONEncoder(separators=(",", ":"))  # records' settings
_quoted = json.encoder.encode_basestring_ascii  # the encoder's own C function for text
#: Encoded metadata by items and types: a worker's failures repeat the same few. Bounded.
_META_CACHE_SIZE = 256
_meta_texts: Dict[Tuple[Any, ...], Tuple[Tuple[type, ...], str]] = {}


def plain_line(entry: DLQEntry, version: int) -> bytes | None:
    """``encode_entry``'s line (record ``version``), byte for byte, or None when
    ``entry`` is not one this function writes."""
    item, stamp = entry.item, entry.timestamp
    kind = type(item)
    if kind is int and item.bit_length() <= 63:
        item_text = int.__repr__(item)
    elif kind is str and item.isascii():
        item_text = _quoted(item)
    else:
        return None
    meta_text = _meta_text(entry.metadata)
    if meta_text is None or type(stamp) is not float or not math.isfinite(stamp) or type(
            entry.retry_count) is not int:
        return None
    qualname, trace = entry.error_qualname, entry.traceback
    try:
        text = "".join((
            '{"entry_id":', _quoted(entry.entry_id), ',"v":', int.__repr__(version), ',"error_type":',
            _quoted(entry.error_type),
            ',"error_qualname":', "null" if qualname is None else _quoted(qualname),
            ',"error_message":', _quoted(entry.error_message), ',"reason":', _quoted(entry.reason),
            ',"timestamp":', float.__repr__(stamp), ',"retry_count":', int.__repr__(entry.retry_count),
            ',"item_codec":"json","item":', item_text, ',"metadata_codec":"json","metadata":',
            meta_text, ',"traceback":', "null" if trace is None else _quoted(trace), "}\n",
        ))
    except TypeError:  # a text field that is not text: the generic path encodes it as it is
        return None
    return text.encode("ascii")


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
