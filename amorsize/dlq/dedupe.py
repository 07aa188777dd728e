"""Dedupe: one entry per failing item, with its attempts summed, not a copy per failure.

With ``DLQPolicy(dedupe=True)`` a failure of an item already in the queue updates
that entry instead of adding another. The item is recognized by its key:
``DeadLetterQueue(key=callable)``, or by default :func:`default_key`, a SHA-256 of
the item's canonical encoding (sorted-key compact JSON for JSON values, the
cloudpickle bytes otherwise, so equal JSON items always match).

The updated entry keeps its id and its place (so ``timestamp`` stays the first
failure) and gets, in ``metadata``:

* ``attempts``: the attempts of every failure summed (``retry_count`` is one less);
* ``failures``: how many failures were folded into it;
* ``first_failure_at`` / ``last_failure_at``: POSIX times;
* ``error_history``: the last :data:`ERROR_HISTORY` distinct errors (``Type: message``);
* ``dedupe_key``: the key, so a reopened queue recognizes the item.

Its error fields are the last error's. On disk the update is one more appended
line with the same id (the later line wins when read), so the journal stays
append-only and a failure costs O(1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Dict, List, Mapping, Sequence

from amorsize._validate import check_callable, invalid_value
from amorsize.dlq.entry import DLQEntry
from amorsize.serialization import PickledPayload, PickledValue, UnserializableItem, dumps, is_json_native

#: Distinct errors an entry remembers, newest last.
ERROR_HISTORY = 5
KEY_FIELD = "dedupe_key"

KeyFunction = Callable[[Any], Any]


def default_key(item: Any) -> str:
    """A stable SHA-256 hex digest of ``item``'s canonical encoding."""
    if isinstance(item, (PickledValue, PickledPayload)):
        data = item.data
    elif isinstance(item, UnserializableItem):
        data = f"unserializable:{item.type_name}:{item.repr}".encode()
    elif is_json_native(item):
        data = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        data = dumps(item)
    return hashlib.sha256(data).hexdigest()


def _attempts(entry: DLQEntry) -> int:
    meta = entry.metadata if isinstance(entry.metadata, dict) else {}
    value = meta.get("attempts")
    return value if isinstance(value, int) and value > 0 else entry.retry_count + 1


def _error_text(entry: DLQEntry) -> str:
    return f"{entry.error_type}: {entry.error_message}"


def first_seen(entry: DLQEntry, key: str) -> DLQEntry:
    """``entry`` as the first failure of its item: the dedupe fields set."""
    meta = dict(entry.metadata) if isinstance(entry.metadata, dict) else {}
    meta.setdefault(KEY_FIELD, key)
    meta.setdefault("failures", 1)
    meta.setdefault("first_failure_at", entry.timestamp)
    meta.setdefault("last_failure_at", entry.timestamp)
    meta.setdefault("error_history", [_error_text(entry)])
    return dataclasses.replace(entry, metadata=meta)


def merge(existing: DLQEntry, failure: DLQEntry) -> DLQEntry:
    """``existing`` after its item failed again as ``failure`` says (see the module doc)."""
    meta = dict(existing.metadata) if isinstance(existing.metadata, dict) else {}
    attempts = _attempts(existing) + _attempts(failure)
    history = [h for h in meta.get("error_history") or [_error_text(existing)] if isinstance(h, str)]
    text = _error_text(failure)
    if text in history:
        history.remove(text)
    history = [*history, text][-ERROR_HISTORY:]
    fresh = failure.metadata if isinstance(failure.metadata, dict) else {}
    meta.update({k: v for k, v in fresh.items() if k not in ("attempts", KEY_FIELD)})
    meta.update({
        "attempts": attempts,
        "failures": int(meta.get("failures") or 1) + 1,
        "first_failure_at": meta.get("first_failure_at", existing.timestamp),
        "last_failure_at": failure.timestamp,
        "error_history": history,
    })
    return dataclasses.replace(
        existing, error_type=failure.error_type, error_qualname=failure.error_qualname,
        error_message=failure.error_message, traceback=failure.traceback, reason=failure.reason,
        retry_count=attempts - 1, metadata=meta,
    )


class Deduper:
    """The key index of one queue; the queue's lock guards it."""

    def __init__(self, key: KeyFunction | None = None) -> None:
        self.key = key or default_key
        self._index: Dict[str, str] | None = None  # key -> entry_id; None: rebuild

    def forget(self) -> None:
        """Rebuild the index at the next use (entries were loaded from a file)."""
        self._index = None

    def _key_of(self, entry: DLQEntry) -> str:
        meta = entry.metadata if isinstance(entry.metadata, dict) else {}
        stored = meta.get(KEY_FIELD)
        return stored if isinstance(stored, str) else str(self.key(entry.item))

    def fold(self, batch: Sequence[DLQEntry], entries: Mapping[str, DLQEntry]) -> List[DLQEntry]:
        """``batch`` with each failure of an item already in ``entries`` merged into its entry."""
        if self._index is None:
            self._index = {self._key_of(e): i for i, e in entries.items()}
        out: Dict[str, DLQEntry] = {}
        for entry in batch:
            key = self._key_of(entry)
            known = self._index.get(key)
            current = out.get(known) if known else None
            if current is None and known is not None:
                current = entries.get(known)
            if current is not None and current.entry_id != entry.entry_id:
                merged = merge(current, entry)
            else:
                merged = first_seen(entry, key)
            self._index[key] = merged.entry_id
            out[merged.entry_id] = merged
        return list(out.values())


def dedupe_for(policy: Any, key: KeyFunction | None) -> Deduper | None:
    """The queue's :class:`Deduper` (``policy.dedupe``); a ``key`` without dedupe is refused."""
    check_callable("key", key, "a callable(item) or None", optional=True)
    if key is not None and not policy.dedupe:
        raise invalid_value("key", key, "None unless DLQPolicy(dedupe=True)")
    return Deduper(key) if policy.dedupe else None
