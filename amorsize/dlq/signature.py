"""Failure signatures: an error's type and message with the variable parts taken out.

"record 7 is malformed" and "record 9 is malformed" are one failure, seen twice.
A signature is ``<error type>: <message>`` where the parts that vary from item to
item are replaced by placeholders, in this order (earlier ones win):

=========  ==================================================  ==========
UUIDs      ``123e4567-e89b-12d3-a456-426614174000``            ``<uuid>``
quoted     ``'abc'``, ``"abc"`` (not an apostrophe in a word)  ``<str>``
paths      ``/var/data/x.csv``, ``C:\\data\\x.csv``              ``<path>``
hex ids    ``0x7f3a``, ``deadbeef42`` (8+ hex digits)          ``<hex>``
numbers    ``7``, ``-3.5``, ``1e9``                            ``<num>``
=========  ==================================================  ==========

Only the message's first line counts (a second line is usually a dump of the
input), cut at :data:`SIGNATURE_MESSAGE_CHARS` characters.

Every ASCII digit leaves the signature (the last rule takes any digit that is
left), and no rule tells the digits 1-9 apart (only ``0`` is a literal, in
``0x``). So messages that differ only in digits 1-9 have the same signature, and
the cache is keyed by the message with those digits written as ``1``: "record 7
is malformed" and "record 9 is malformed" are one cache entry, and a 100k-entry
queue normalizes a few hundred messages, not 100k.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, Iterable, List, Tuple

#: Message characters (after normalizing) kept in a signature.
SIGNATURE_MESSAGE_CHARS = 200
#: Distinct (type, message) pairs whose signature is remembered (digits 1-9 count as
#: one, see the module doc); a 100k-entry queue usually holds far fewer than entries.
SIGNATURE_CACHE_SIZE = 8192

_RULES: Tuple[Tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
     "<uuid>"),
    (re.compile(r"(?<!\w)'[^'\n]*'(?!\w)|\"[^\"\n]*\""), "<str>"),
    (re.compile(r"(?<![\w/.<])(?:~|\.{1,2})?/[\w.\-~]+(?:/[\w.\-~]*)*|\b[A-Za-z]:\\[^\s'\",;()]+"),
     "<path>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"),
     "<hex>"),
    (re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\d+"), "<num>"),
)
# The cache key of a message: digits 1-9 are interchangeable in every rule (module doc).
# Bytes: bytes.translate is ~20x faster than str.translate, and in UTF-8 the bytes of
# ASCII digits never occur inside another character's encoding.
_SAME_DIGITS = bytes.maketrans(b"23456789", b"11111111")


def normalize_message(message: str) -> str:
    """``message``'s first line with its variable parts replaced by placeholders."""
    text = message.strip().split("\n", 1)[0].strip()
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text[:SIGNATURE_MESSAGE_CHARS]


def signature_of(error_type: str, message: str) -> str:
    """The signature ``"<error type>: <normalized message>"`` (just the type for no message)."""
    return _signature(error_type, message.encode("utf-8", "surrogatepass").translate(_SAME_DIGITS))


@functools.lru_cache(maxsize=SIGNATURE_CACHE_SIZE)
def _signature(error_type: str, key: bytes) -> str:
    normalized = normalize_message(key.decode("utf-8", "surrogatepass"))
    return f"{error_type}: {normalized}" if normalized else error_type


def entry_signature(entry: Any) -> str:
    """The signature of a DLQ entry (its qualified error type, if known)."""
    return signature_of(entry.error_qualname or entry.error_type, entry.error_message)


def top_signatures(entries: Iterable[Any], limit: int) -> List[Dict[str, Any]]:
    """The ``limit`` most common signatures, each with its count and one example entry.

    Ties keep the order in which the signatures first appear.
    """
    counts: Dict[str, int] = {}
    examples: Dict[str, Any] = {}
    for entry in entries:  # entry_signature, inlined: this runs once per entry of a queue
        sig = signature_of(entry.error_qualname or entry.error_type, entry.error_message)
        if sig in counts:
            counts[sig] += 1
        else:
            counts[sig] = 1
            examples[sig] = entry
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [
        {
            "signature": sig,
            "count": count,
            "example": {
                "entry_id": examples[sig].entry_id,
                "error_message": examples[sig].error_message,
            },
        }
        for sig, count in ranked
    ]
