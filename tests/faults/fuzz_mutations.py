"""Mutations of valid journals and checkpoints, for the corrupt-input fuzzers (issue 13, 4).

Not a test module: tests/faults/test_corrupt_journal.py and test_corrupt_checkpoint.py
import it. The mutations: bit flips, truncation, insertion, deep nesting, wrong field
types, huge numbers, invalid UTF-8 (structure-aware replacement lives with the
checkpoint tests).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from typing import Any, Callable, List, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from amorsize import (
    Checkpoint,
    DeadLetterQueue,
    DLQPolicy,
    execute,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEEP = 100_000
FUZZ = settings(
    max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JOURNAL_FIELDS = (
    "entry_id", "v", "error_type", "error_qualname", "error_message", "reason", "timestamp",
    "retry_count", "item_codec", "item", "metadata_codec", "metadata", "traceback", "item_repr",
)
HUGE_NUMBERS = ("1e999", "-1e999", "1" + "0" * 400, "9" * 5000, "NaN", "-Infinity", "1e-400", "-0")
BAD_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf")
WRONG_VALUES = st.sampled_from(
    [None, True, False, 0, -5, 1.5, "", "text", "ValueError", [], [1, "a"], {}, {"a": {"b": []}},
     10**30, -(10**30)]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


# --- valid files to mutate (built once) ------------------------------------------------


class Odd(Exception):
    pass


def fails_on_thirds(x: int) -> int:
    if x % 3 == 0:
        raise Odd(f"third {x}")
    return x * 10


CHECKPOINT_ITEMS = list(range(8))


@functools.cache
def valid_journal() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
        queue.add({"n": 1, "s": "é"}, ValueError("bad"), retry_count=2, metadata={"k": [1, 2]})
        queue.add(("tuple", 1), KeyError("k"), reason="timeout")  # stored pickled
        queue.add(3.5, Odd("odd"), reason="worker_crash")
        queue.add(None, RuntimeError("x" * 50))
        queue.close()
        with open(os.path.join(directory, "dlq.jsonl"), "rb") as handle:
            return handle.read()


@functools.cache
def valid_checkpoint() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "run.ckpt")
        dlq = DeadLetterQueue(DLQPolicy(directory=directory, auto_persist=False))
        execute(fails_on_thirds, CHECKPOINT_ITEMS, n_jobs=1, chunksize=3, dlq=dlq,
                checkpoint=Checkpoint(path, every_items=1, keep=True))
        with open(path, "rb") as handle:
            return handle.read()


# --- mutations ---------------------------------------------------------------------------

Mutation = Tuple[Any, ...]


def set_json_field(line: bytes, field: str, raw: str) -> bytes:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # a line an earlier mutation nested too deeply
        return line
    if not isinstance(record, dict):
        return line
    record[field] = "\x00PLACEHOLDER\x00"
    text = json.dumps(record).replace(json.dumps("\x00PLACEHOLDER\x00"), raw)
    return text.encode()


def _on_a_line(data: bytes, at: int, change: Callable[[bytes], bytes]) -> bytes:
    lines = data.split(b"\n")
    index = at % len(lines)
    lines[index] = change(lines[index])
    return b"\n".join(lines)


def apply(data: bytes, mutation: Mutation) -> bytes:
    """One mutation of ``data`` (positions wrap around its length)."""
    kind, at = mutation[0], mutation[1]
    size = max(len(data), 1)
    if kind == "flip":
        pos = at % size
        return data[:pos] + bytes([data[pos] ^ (1 << mutation[2])]) + data[pos + 1:] if data else data
    if kind == "truncate":
        return data[: at % size]
    if kind == "insert":
        pos = at % (len(data) + 1)
        return data[:pos] + mutation[2] + data[pos:]
    if kind == "nest":
        depth = mutation[2]
        nested = "[" * depth + "]" * depth
        if mutation[3]:  # inside a record, in place of one of its fields
            return _on_a_line(data, at, lambda line: set_json_field(line, mutation[4], nested))
        return _on_a_line(data, at, lambda line: nested.encode())
    if kind == "field":
        return _on_a_line(data, at, lambda line: set_json_field(line, mutation[2], json.dumps(mutation[3])))
    if kind == "huge":
        return _on_a_line(data, at, lambda line: set_json_field(line, mutation[2], mutation[3]))
    if kind == "utf8":
        pos = at % (len(data) + 1)
        return data[:pos] + mutation[2] + data[pos:]
    raise AssertionError(kind)


def mutations(fields: Tuple[str, ...]) -> st.SearchStrategy[List[Mutation]]:
    position = st.integers(0, 1 << 20)
    one = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("nest"), position, st.sampled_from([50, 2000, DEEP]), st.booleans(),
                  st.sampled_from(fields)),
        st.tuples(st.just("field"), position, st.sampled_from(fields), WRONG_VALUES | JSON_VALUES),
        st.tuples(st.just("huge"), position, st.sampled_from(fields), st.sampled_from(HUGE_NUMBERS)),
        st.tuples(st.just("utf8"), position, st.sampled_from(BAD_UTF8)),
    )
    return st.lists(one, min_size=1, max_size=3)


def open_queue(directory: str, strict: bool) -> DeadLetterQueue:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last record is a warning, by design
        return DeadLetterQueue(DLQPolicy(directory=directory, strict=strict, max_entries=0))
