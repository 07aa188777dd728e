"""The journal's record codec: one DLQ entry as one line of JSON, and back.

A record holds the error fields as readable JSON and the item (and metadata)
through :mod:`amorsize.serialization`'s codecs: JSON-native values as they are,
anything else as tagged cloudpickle bytes. :mod:`amorsize.dlq.journal` does the
file handling (appends, locks, compaction) and never looks inside a record
beyond its id.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from amorsize.dlq.entry import DLQEntry
from amorsize.serialization import (
    PickledPayload,
    PickledValue,
    UnserializableItem,
    decode_value,
    encode_value,
    short_repr,
)

RECORD_VERSION = 1
_ID_PREFIX = b'{"entry_id":"'
# One encoder for every record: json.dumps() with non-default options builds a new
# one per call, a measurable part of an add.
_encoder = json.JSONEncoder(separators=(",", ":"))


#: Metadata that could not be loaded as a dict (pickle not allowed) is kept under
#: this key, as a placeholder that is written back byte for byte.
STORED_METADATA_KEY = "_stored"


def encode_entry(entry: DLQEntry, *, pickle_everything: bool) -> bytes:
    """One journal line (with its newline) for ``entry``."""
    item_codec, item = encode_value(entry.item, force_pickle=pickle_everything)
    meta: Any = entry.metadata
    if (
        type(meta) is dict
        and len(meta) == 1
        and isinstance(
            meta.get(STORED_METADATA_KEY), (PickledPayload, PickledValue, UnserializableItem)
        )
    ):
        meta = meta[STORED_METADATA_KEY]  # a placeholder from decode_record: store it as it came
    if meta:
        meta_codec, meta_payload = encode_value(meta, force_pickle=pickle_everything)
    else:
        meta_codec, meta_payload = "json", {}
    record: Dict[str, Any] = {
        "entry_id": entry.entry_id,
        "v": RECORD_VERSION,
        "error_type": entry.error_type,
        "error_qualname": entry.error_qualname,
        "error_message": entry.error_message,
        "reason": entry.reason,
        "timestamp": entry.timestamp,
        "retry_count": entry.retry_count,
        "item_codec": item_codec,
        "item": item,
        "metadata_codec": meta_codec,
        "metadata": meta_payload,
        "traceback": entry.traceback,
    }
    if item_codec != "json":
        # A placeholder keeps the repr of the value it stands for, not its own.
        item_repr = entry.item.repr if isinstance(entry.item, PickledPayload) else None
        record["item_repr"] = item_repr if item_repr is not None else short_repr(entry.item)
    try:
        text = _encoder.encode(record)
    except (ValueError, TypeError, RecursionError):
        if pickle_everything:
            raise
        # JSON-native by type, yet too deep for the encoder: store item and metadata pickled.
        return encode_entry(entry, pickle_everything=True)
    return (text + "\n").encode("ascii")


def decode_record(record: Dict[str, Any], *, allow_pickle: bool, lazy: bool = False) -> DLQEntry:
    """Inverse of :func:`encode_entry` for a parsed line (``lazy``: see ``decode_value``)."""
    item_repr = record.get("item_repr")
    item = decode_value(record["item_codec"], record["item"], allow_pickle=allow_pickle,
                        repr_text=item_repr, lazy=lazy)
    metadata = decode_value(record.get("metadata_codec", "json"), record.get("metadata") or {},
                            allow_pickle=allow_pickle, repr_text="metadata", lazy=lazy)
    return DLQEntry(
        item=item,
        error_type=record["error_type"],
        error_message=record["error_message"],
        timestamp=record["timestamp"],
        traceback=record.get("traceback"),
        retry_count=record.get("retry_count", 0),
        # A lazily decoded or not-allowed pickle stays a stand-in until a trusted reader loads it.
        metadata=metadata if isinstance(metadata, dict) else {STORED_METADATA_KEY: metadata},
        entry_id=record["entry_id"],
        reason=record.get("reason", "exception"),
        error_qualname=record.get("error_qualname"),
    )


def record_id(line: bytes) -> str | None:
    # Fast path for our own lines; compaction reads every record and only needs the id.
    if line.startswith(_ID_PREFIX):
        end = line.find(b'"', len(_ID_PREFIX))
        if end > 0:
            raw = line[len(_ID_PREFIX):end]
            if b"\\" not in raw:  # an escaped character: let the JSON parser read it
                return raw.decode("ascii")
    return None


def parse_line(line: bytes) -> Dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("entry_id"), str):
        return None
    if "error_type" not in record or "item_codec" not in record:
        return None
    return record
