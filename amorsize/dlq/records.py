"""The journal's record codec: one DLQ entry as one line of JSON, and back.

A record holds the error fields as readable JSON and the item (and metadata)
through :mod:`amorsize.serialization`'s codecs: JSON-native values as they are,
anything else as tagged cloudpickle bytes. :mod:`amorsize.dlq.journal` does the
file handling (appends, locks, compaction) and never looks inside a record
beyond its id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Tuple

from amorsize._fs import read_nofollow
from amorsize.dlq._plainline import plain_line
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.errors import DLQCorruptError, DLQFileNotFoundError, DLQStorageError
from amorsize.serialization import (
    CODEC_CLOUDPICKLE,
    CODEC_JSON,
    CODEC_REPR,
    PickledPayload,
    PickledValue,
    UnserializableItem,
    decode_value,
    encode_value,
    short_repr,
)

RECORD_VERSION = 1
_CODECS = (CODEC_JSON, CODEC_CLOUDPICKLE, CODEC_REPR)
#: Largest retry count a record may hold (a bigger one is corruption, not a count).
MAX_RETRY_COUNT = 2**63 - 1
#: The text fields of a record: (name, may be null).
_TEXT_FIELDS = (
    ("error_type", False), ("error_message", False), ("error_qualname", True),
    ("traceback", True), ("item_repr", True),
)
_ID_PREFIX = b'{"entry_id":"'
# One encoder for every record: json.dumps() with non-default options builds a new
# one per call, a measurable part of an add.
_encoder = json.JSONEncoder(separators=(",", ":"))
# The C scanner behind json.loads, called directly: per line it skips loads()'s
# encoding detection and whitespace regexes, a third of the time of reading a journal.
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


#: Metadata that could not be loaded as a dict (pickle not allowed) is kept under
#: this key, as a placeholder that is written back byte for byte.
STORED_METADATA_KEY = "_stored"


def encode_entry(entry: DLQEntry, *, pickle_everything: bool) -> bytes:
    """One journal line (with its newline) for ``entry``."""
    if not pickle_everything:
        line = plain_line(entry, RECORD_VERSION)  # a worker's failure: the quick way
        if line is not None:
            return line
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
        timestamp=float(record["timestamp"]),
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


#: Keys every line :func:`encode_entry` writes holds, in its order (see :func:`looks_encoded`).
_ENCODED_KEYS = (b',"v":', b',"error_type":', b',"error_message":', b',"reason":', b',"timestamp":',
                 b',"item_codec":', b',"metadata_codec":', b',"traceback":')


def looks_encoded(line: bytes) -> bool:
    """A quick check (~1 us, not a parse) that ``line`` is whole as :func:`encode_entry`
    writes it: its id first, every key in order, the closing brace. It keeps a truncated
    line or one that is not a record out of a journal; what a parse would find wrong
    inside a field is reported when the record is read, as anywhere in the journal."""
    if not (line.startswith(_ID_PREFIX) and line.endswith(b"}\n")):
        return False
    at = 0
    for key in _ENCODED_KEYS:  # one pass over the line, not one per key
        at = line.find(key, at)
        if at < 0:
            return False
    return True


def parse_line(line: bytes) -> Dict[str, Any] | None:
    """The checked record on ``line``, or None when it is not a valid DLQ record."""
    return read_line(line)[0]


def read_line(line: bytes) -> Tuple[Dict[str, Any] | None, str]:
    """``(record, "")`` for a valid record line, else ``(None, why)``.

    Every field's type is checked here, once, so nothing downstream (summary,
    filter, the CLI) meets a dict where a float belongs.
    """
    record = _scan(line)
    if record is None:
        return _slow_read_line(line)
    problem = _record_problem(record)
    return (None, problem) if problem else (record, "")


def _scan(line: bytes) -> Dict[str, Any] | None:
    """The JSON object that is exactly ``line`` (UTF-8, no padding), else None (ask json.loads)."""
    try:
        text = line.decode("utf-8")
        value, end = _scan_once(text, 0)
    except (ValueError, StopIteration, RecursionError):  # json.loads names the problem
        return None
    return value if end == len(text) and type(value) is dict else None


def _slow_read_line(line: bytes) -> Tuple[Dict[str, Any] | None, str]:
    try:
        record = json.loads(line)
    except RecursionError:
        return None, "the record is nested too deeply"
    except (ValueError, UnicodeDecodeError) as exc:  # invalid JSON or UTF-8, a 5000-digit int
        return None, f"the record is not valid JSON ({type(exc).__name__})"
    if not isinstance(record, dict):
        return None, "the record is not a JSON object"
    problem = _record_problem(record)
    return (None, problem) if problem else (record, "")


def _record_problem(record: Dict[str, Any]) -> str:
    entry_id = record.get("entry_id")
    if not isinstance(entry_id, str) or not entry_id:
        return "entry_id is not a non-empty string"
    if record.get("v", RECORD_VERSION) != RECORD_VERSION or type(record.get("v", 1)) is not int:
        return f"unknown record version {record.get('v')!r}"
    for name, nullable in _TEXT_FIELDS:
        value = record.get(name)
        if not (isinstance(value, str) or (nullable and value is None)):
            return f"{name} is not a string"
    if record.get("reason", "exception") not in REASONS:
        return "reason is not one of " + ", ".join(REASONS)
    stamp = record.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        return "timestamp is not a number"
    try:
        if not math.isfinite(float(stamp)):
            return "timestamp is not finite"
    except OverflowError:
        return "timestamp is out of range"
    retries = record.get("retry_count", 0)
    if type(retries) is not int or not 0 <= retries <= MAX_RETRY_COUNT:
        return "retry_count is not a non-negative integer"
    return _payload_problem(record, "item", record.get("item_codec")) or _payload_problem(
        record, "metadata", record.get("metadata_codec", CODEC_JSON)
    )


def _payload_problem(record: Dict[str, Any], name: str, codec: Any) -> str:
    if codec not in _CODECS:
        return f"{name}_codec is not one of {', '.join(_CODECS)}"
    payload = record.get(name)
    if name == "metadata" and codec == CODEC_JSON and not isinstance(payload, (dict, type(None))):
        return "metadata is not an object"
    if codec == CODEC_CLOUDPICKLE:
        if not isinstance(payload, str):
            return f"{name} is not base64 text"
        try:
            base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error):
            return f"{name} is not base64 text"
    if codec == CODEC_REPR and not isinstance(payload, dict):
        return f"{name} is not an object"
    return ""

logger = logging.getLogger("amorsize.dlq")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block (it is restarted after, if it was on).

    Reading a journal makes a few objects per record and no cycles; with the
    collector on, its passes over the growing heap double the time of a 100k read.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class ReadResult:
    """What reading a journal found: records in file order and what was skipped."""

    records: List[Any] = field(default_factory=list)  # dicts, or what ``convert`` made of them
    numbers: List[int] = field(default_factory=list)  # the line number of each record
    lines: List[bytes] = field(default_factory=list)  # with parse=False only
    corrupt_skipped: int = 0
    torn_tail: bool = False


@dataclass(frozen=True)
class NotConverted:
    """In ``ReadResult.records``: ``convert`` raised ``error`` on this record."""

    error: Exception


def read_records(path: str, *, strict: bool = True, parse: bool = True,
                 convert: Callable[[Dict[str, Any]], Any] | None = None) -> ReadResult:
    """Read every record of the journal at ``path``.

    Args:
        strict: raise on a corrupt record before the last line; otherwise skip and count it.
        parse: parse records into dicts (False: only split lines, for compaction).
        convert: applied to each record as it is read, so the dicts are never all held
            at once; ``records`` holds its results (a :class:`NotConverted` where it raised).

    Raises:
        DLQFileNotFoundError: ``path`` does not exist.
        DLQCorruptError: a record before the last line is unreadable and ``strict``.
    """
    try:
        data = read_nofollow(path, "DLQ file", DLQStorageError)
    except FileNotFoundError:
        raise DLQFileNotFoundError(f"DLQ file not found: {path!r}") from None
    # One read, a snapshot: a writer that cuts a torn tail and appends while we read
    # cannot splice its lines into ours. Then line by line (BytesIO shares the bytes),
    # so a loader never holds the file's lines and their records all at once.
    with io.BytesIO(data) as handle, gc_paused():
        return _read_lines(path, handle, strict=strict, parse=parse, convert=convert)


def _numbered_lines(handle: BinaryIO) -> Iterator[Tuple[int, bytes, bool]]:
    """``(number, line without its newline, is it the last line)`` for each line."""
    previous: Tuple[int, bytes] | None = None
    for number, raw in enumerate(handle, start=1):
        if previous is not None:
            yield previous[0], previous[1], False
        previous = (number, raw[:-1] if raw.endswith(b"\n") else raw)
    if previous is not None:
        yield previous[0], previous[1], True


def _read_lines(path: str, handle: BinaryIO, *, strict: bool, parse: bool,
                convert: Callable[[Dict[str, Any]], Any] | None) -> ReadResult:
    result = ReadResult()
    for number, line, last in _numbered_lines(handle):
        if not line.strip():
            continue
        record = None
        if parse or last or record_id(line) is None:
            record, problem = read_line(line)
            if record is None:
                if last:
                    result.torn_tail = True
                    warnings.warn(
                        f"DLQ file {path!r}: skipped a torn last record at line {number} "
                        "(a write was cut short by a crash); every earlier record was loaded",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    break
                if strict:
                    raise DLQCorruptError(path, number, problem)
                result.corrupt_skipped += 1
                logger.warning("DLQ file %r: skipped corrupt record at line %d (%s)", path, number,
                               problem)
                continue
        if parse:
            if convert is not None:
                try:
                    record = convert(record)  # type: ignore[arg-type]
                except Exception as exc:  # the caller decides, after the whole file is read
                    record = NotConverted(exc)  # type: ignore[assignment]
            result.records.append(record)
            result.numbers.append(number)
        else:  # only compaction wants the lines; a loader would hold the file twice
            result.lines.append(line + b"\n")
    return result
