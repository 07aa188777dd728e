"""Reading a checkpoint file: any content loads or is a CheckpointMismatchError.

The file is read without following a symlink, decoded with deep nesting caught,
and its shape checked field by field (document, segments, values, failure rows,
positions in range and not overlapping) before anything is used, so a wrong
shape never surfaces as ``KeyError``, ``IndexError`` or an assertion later.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from amorsize._fs import read_nofollow
from amorsize.dlq.entry import REASONS
from amorsize.errors import CheckpointMismatchError
from amorsize.failure import Failure
from amorsize.serialization import CODEC_CLOUDPICKLE, CODEC_JSON, decode_value

CHECKPOINT_VERSION = 1
#: Fields of one failure row: position, entry id, error type, message, reason.
FAILURE_ROW_LENGTH = 5


class _Malformed(Exception):
    """The file's shape is wrong; carries what is wrong."""


def _fresh(path: str, problem: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"checkpoint {path!r} is unreadable ({problem}); delete it, or pass a different "
        "path, to start fresh"
    )


def read_segments(
    path: str, fingerprint: str | None, total: int | None, *, allow_pickle: bool
) -> Dict[int, List[Any]]:
    """The ``{start: values}`` segments of the checkpoint at ``path``.

    Raises:
        CheckpointMismatchError: unreadable, of a wrong shape, or written for another
            function or other inputs.
        StorageError: ``path`` is a symlink.
    """
    try:
        document = json.loads(read_nofollow(path, "checkpoint"))
    except RecursionError:
        raise _fresh(path, "it is nested too deeply") from None
    except ValueError as exc:  # invalid JSON or UTF-8
        raise _fresh(path, str(exc)) from None
    if not isinstance(document, dict) or not isinstance(document.get("segments"), list):
        raise _fresh(path, "it is not a checkpoint document")
    if document.get("fingerprint") != fingerprint:
        raise CheckpointMismatchError(
            f"checkpoint {path!r} was written for another function or other inputs "
            f"(fingerprint {document.get('fingerprint')!r} != {fingerprint}); delete the "
            "file, or pass a different path, to start fresh"
        )
    if document.get("version") != CHECKPOINT_VERSION:
        raise _fresh(path, f"unknown version {document.get('version')!r}")
    try:
        return _segments(document["segments"], total, allow_pickle)
    except _Malformed as exc:
        raise _fresh(path, str(exc)) from None
    except _PickleRefused:
        raise CheckpointMismatchError(
            f"checkpoint {path!r} stores results as pickle; pass "
            "Checkpoint(..., allow_pickle=True) if you trust the file, or delete it"
        ) from None


class _PickleRefused(Exception):
    pass


def _segments(raw: List[Any], total: int | None, allow_pickle: bool) -> Dict[int, List[Any]]:
    segments: Dict[int, List[Any]] = {}
    for segment in raw:
        if not isinstance(segment, dict):
            raise _Malformed("a segment is not an object")
        start = segment.get("start")
        if type(start) is not int or start < 0:
            raise _Malformed(f"a segment starts at {start!r}")
        if start in segments:
            raise _Malformed(f"two segments start at position {start}")
        values = _values(segment, allow_pickle)
        _place_failures(values, segment.get("failures", []))
        if total is not None and start + len(values) > total:
            raise _Malformed(f"a segment runs past the {total} inputs")
        segments[start] = values
    end = 0
    for start in sorted(segments):
        if start < end:
            raise _Malformed(f"segments overlap at position {start}")
        end = start + len(segments[start])
    return segments


def _values(segment: Dict[str, Any], allow_pickle: bool) -> List[Any]:
    codec = segment.get("codec")
    if codec not in (CODEC_JSON, CODEC_CLOUDPICKLE):
        raise _Malformed(f"unknown codec {codec!r}")
    try:
        values = decode_value(codec, segment.get("values"), allow_pickle=allow_pickle)
    except Exception as exc:  # bad base64, a pickle that does not load
        raise _Malformed(f"results do not decode ({type(exc).__name__})") from None
    if codec == CODEC_CLOUDPICKLE and not allow_pickle:
        raise _PickleRefused()
    if not isinstance(values, list):
        raise _Malformed("results are not a list")
    return values


def _place_failures(values: List[Any], rows: Any) -> None:
    if not isinstance(rows, list):
        raise _Malformed("failures are not a list")
    for row in rows:
        if not isinstance(row, list) or len(row) != FAILURE_ROW_LENGTH:
            raise _Malformed("a failure row is not a list of 5 fields")
        pos, entry_id, error_type, message, reason = row
        if type(pos) is not int or not 0 <= pos < len(values):
            raise _Malformed(f"a failure is at position {pos!r}, outside its segment")
        if not all(isinstance(v, str) for v in (entry_id, error_type, message)) or (
            reason not in REASONS
        ):
            raise _Malformed("a failure row has fields of the wrong type")
        values[pos] = Failure(entry_id, error_type, message, reason)
