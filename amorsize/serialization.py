"""How items and payloads are serialized: cloudpickle transport and the JSON item codec.

Two concerns live here because both answer "how does a user's value survive a
boundary":

* **Transport.** Functions and items cross process boundaries with cloudpickle,
  so lambdas, closures and local classes work. Values that even cloudpickle
  cannot serialize become an :class:`UnserializableItem` (its repr and a flag),
  never an exception that would lose the item.
* **Storage.** A DLQ record stores its item either natively in JSON (when the
  value survives a JSON round trip exactly) or as cloudpickle bytes tagged with a
  codec name. Pickled bytes are only ever loaded with an explicit opt-in.
"""

from __future__ import annotations

import base64
import pickle
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Tuple

import cloudpickle

from amorsize.errors import PickleNotAllowedError

CODEC_JSON = "json"
CODEC_CLOUDPICKLE = "cloudpickle"
CODEC_REPR = "repr"  # the value could not be serialized at all; only its repr was kept

#: Python refuses to parse integers longer than 4300 digits (CVE-2020-10735), so
#: JSON cannot round-trip them; past this many bits an int is stored pickled.
_MAX_JSON_INT_BITS = 10_000

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlong = 100


def short_repr(value: Any) -> str:
    """A bounded-cost, bounded-length repr that never raises.

    A value still in its pickled form (:class:`PickledValue`, :class:`PickledPayload`)
    is shown by the repr of the value it holds, not by its bytes.
    """
    held = getattr(value, "repr", None) if isinstance(value, (PickledValue, PickledPayload)) else None
    if isinstance(held, str) and held:
        return held
    try:
        return _repr.repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the item
        return f"<{type(value).__qualname__} (repr failed: {type(exc).__name__})>"


@dataclass(frozen=True)
class PickledValue:
    """A value already serialized with cloudpickle, carried as opaque bytes.

    The manager process stores these without unpickling them, so it never has
    to import the user's classes; the parent decodes them on read.
    """

    data: bytes
    type_name: str
    repr: str

    def load(self) -> Any:
        return cloudpickle.loads(self.data)


@dataclass(frozen=True)
class UnserializableItem:
    """Stand-in for a value that even cloudpickle could not serialize."""

    repr: str
    type_name: str
    error: str

    def __bool__(self) -> bool:
        return True


def dumps(value: Any) -> bytes:
    """Serialize with cloudpickle at the highest protocol."""
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def pack_for_transport(value: Any) -> Any:
    """Make ``value`` safe to send through a stdlib-pickling channel (a manager proxy).

    JSON-native values pass as they are; anything else is pre-pickled with
    cloudpickle into a :class:`PickledValue`; a value nothing can serialize becomes
    an :class:`UnserializableItem`.
    """
    if is_json_native(value):
        return value
    if isinstance(value, (PickledValue, UnserializableItem)):
        return value
    try:
        return PickledValue(dumps(value), type(value).__qualname__, short_repr(value))
    except Exception as exc:
        return UnserializableItem(short_repr(value), type(value).__qualname__, _describe(exc))


def unpack_transported(value: Any) -> Any:
    """Inverse of :func:`pack_for_transport`.

    An unserializable stand-in stays as it is; so does a :class:`PickledValue` this
    process cannot unpickle (its class is not importable here), rather than losing it.
    """
    if isinstance(value, PickledValue):
        try:
            return value.load()
        except Exception:
            return value
    return value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def is_json_native(value: Any) -> bool:
    """True when ``value`` survives ``json.loads(json.dumps(value))`` exactly, types included.

    A container that holds itself, or is nested too deep to walk, is not.
    """
    try:
        return _is_json_native(value)
    except RecursionError:
        return False


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _json_text(text: str) -> bool:
    # json.dumps escapes every non-ASCII character and json.loads joins an escaped
    # high+low surrogate pair into one character: '\ud800\udc00' would come back as
    # '\U00010000'. Lone surrogates (surrogateescape'd bytes) survive.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE_PAIR.search(text) is None
    return True


def _is_json_native(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return _json_text(value)
    if value is None or kind is bool:
        return True
    if kind is int:
        return value.bit_length() <= _MAX_JSON_INT_BITS
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if kind is list:
        return all(_is_json_native(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _json_text(k) and _is_json_native(v) for k, v in value.items())
    return False


def encode_value(value: Any, *, force_pickle: bool = False) -> Tuple[str, Any]:
    """Encode ``value`` for a JSON record.

    Returns:
        ``(codec, payload)``: ``("json", value)`` for JSON-native values (unless
        ``force_pickle``), ``("cloudpickle", base64 text)`` otherwise, or
        ``("repr", text)`` when nothing can serialize it.
    """
    if isinstance(value, (PickledValue, PickledPayload)):
        return CODEC_CLOUDPICKLE, base64.b64encode(value.data).decode("ascii")
    if isinstance(value, UnserializableItem):
        return CODEC_REPR, _unserializable_fields(value)
    if is_json_native(value):
        if not force_pickle:
            return CODEC_JSON, value
        # Plain builtins: the stdlib pickler writes the same bytes as cloudpickle, faster.
        return CODEC_CLOUDPICKLE, base64.b64encode(
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        ).decode("ascii")
    try:
        return CODEC_CLOUDPICKLE, base64.b64encode(dumps(value)).decode("ascii")
    except Exception as exc:
        stand_in = UnserializableItem(short_repr(value), type(value).__qualname__, _describe(exc))
        return CODEC_REPR, _unserializable_fields(stand_in)


def _unserializable_fields(value: UnserializableItem) -> dict:
    return {"repr": value.repr, "type_name": value.type_name, "error": value.error}


class PickledPayload:
    """A stored cloudpickle payload that was not loaded because pickle is not allowed.

    It keeps the raw bytes, so saving the queue again loses nothing, and a
    readable repr, so listing and summaries still work.
    """

    __slots__ = ("data", "repr")

    def __init__(self, data: bytes, repr_text: str | None) -> None:
        self.data = data
        self.repr = repr_text

    def load(self) -> Any:
        raise PickleNotAllowedError(
            "this DLQ item is stored as cloudpickle bytes and pickle loading is off; "
            "open the queue with DLQPolicy(allow_pickle=True) (or pass --allow-pickle "
            "to the CLI) if you trust the file"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PickledPayload) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        shown = self.repr if self.repr is not None else f"{len(self.data)} pickled bytes"
        return f"<pickled item, not loaded: {shown}>"


def decode_value(
    codec: str, payload: Any, *, allow_pickle: bool, repr_text: str | None = None, lazy: bool = False
) -> Any:
    """Inverse of :func:`encode_value`.

    Without ``allow_pickle``, pickled payloads come back as :class:`PickledPayload`
    placeholders instead of being unpickled. With ``allow_pickle`` and ``lazy`` they
    come back as :class:`PickledValue` for the reader to unpickle later (the manager
    process of a shared queue never imports users' classes).

    Raises:
        ValueError: the codec is unknown.
    """
    if codec == CODEC_JSON:
        return payload
    if codec == CODEC_CLOUDPICKLE:
        data = base64.b64decode(payload)
        if not allow_pickle:
            return PickledPayload(data, repr_text)
        if lazy:
            return PickledValue(data, "", repr_text or "")
        return pickle.loads(data)
    if codec == CODEC_REPR:
        return UnserializableItem(**payload)
    raise ValueError(f"unknown item codec {codec!r}; expected 'json', 'cloudpickle' or 'repr'")

