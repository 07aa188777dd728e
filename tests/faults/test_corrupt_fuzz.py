"""Every malformed file is a named error (issue 13, "Deliver" 4).

A fuzzer mutates valid journals and checkpoints (bit flips, truncation,
insertion, deep nesting, wrong field types, huge numbers, invalid UTF-8, and
structure-aware replacement of any JSON subtree):

* a journal opens as a valid queue or raises ``DLQCorruptError``; with
  ``strict=False`` it always opens, skipping and counting bad lines; and then
  ``get_summary()``, ``filter()`` and the CLI's ``list``/``summary`` raise nothing;
* a checkpoint loads (the run returns one value per input) or raises
  ``CheckpointMismatchError`` saying how to start fresh.

500 journal and 500 checkpoint examples run in the default suite; each example is
kept cheap (in-process, no subprocess).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from typing import Any, Callable, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amorsize import (
    Checkpoint,
    CheckpointMismatchError,
    DeadLetterQueue,
    DLQCorruptError,
    DLQPolicy,
    Failure,
    execute,
)
from amorsize.cli import main as cli_main

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


def _set_json_field(line: bytes, field: str, raw: str) -> bytes:
    try:
        record = json.loads(line)
    except ValueError:
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
            return _on_a_line(data, at, lambda line: _set_json_field(line, mutation[4], nested))
        return _on_a_line(data, at, lambda line: nested.encode())
    if kind == "field":
        return _on_a_line(data, at, lambda line: _set_json_field(line, mutation[2], json.dumps(mutation[3])))
    if kind == "huge":
        return _on_a_line(data, at, lambda line: _set_json_field(line, mutation[2], mutation[3]))
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


# --- journals ------------------------------------------------------------------------------


def open_queue(directory: str, strict: bool) -> DeadLetterQueue:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last record is a warning, by design
        return DeadLetterQueue(DLQPolicy(directory=directory, strict=strict, max_entries=0))


def use(queue: DeadLetterQueue) -> dict:
    summary = queue.get_summary()
    queue.filter(error_type="ValueError")
    queue.filter(reason="timeout", since=0.0, until=2.0**40)
    for entry in queue.get_entries():
        entry.to_dict()
    return summary


def check_journal(directory: str, data: bytes) -> None:
    with open(os.path.join(directory, "dlq.jsonl"), "wb") as handle:
        handle.write(data)
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    try:
        queue = open_queue(directory, strict=True)
    except DLQCorruptError as exc:
        assert exc.line >= 1 and exc.path.endswith("dlq.jsonl")
    else:
        try:
            use(queue)
        finally:
            queue.close()
    queue = open_queue(directory, strict=False)  # never raises: bad lines are skipped
    try:
        summary = use(queue)
        assert summary["total_entries"] + summary["corrupt_skipped"] <= lines
    finally:
        queue.close()


@pytest.mark.timeout(300)
@FUZZ
@given(mutations(JOURNAL_FIELDS))
def test_any_journal_bytes_open_as_a_queue_or_raise_dlq_corrupt_error(tmp_path, changes):
    data = valid_journal()
    for change in changes:
        data = apply(data, change)
    check_journal(str(tmp_path), data)


def run_cli(*argv: str) -> Tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(list(argv))
    return code, err.getvalue()


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=100)
@given(mutations(JOURNAL_FIELDS))
def test_cli_on_any_journal_exits_0_or_3_without_a_traceback(tmp_path, changes):
    data = valid_journal()
    for change in changes:
        data = apply(data, change)
    directory = str(tmp_path)
    with open(os.path.join(directory, "dlq.jsonl"), "wb") as handle:
        handle.write(data)
    for argv in (("list",), ("summary", "--json"), ("list", "--no-strict"), ("summary", "--no-strict")):
        code, err = run_cli("dlq", argv[0], directory, *argv[1:])
        assert code in (0, 3), (argv, code, err)
        if code == 3:
            assert "dlq.jsonl" in err


# --- named cases, journal ------------------------------------------------------------------


def journal_with_middle(line: bytes) -> bytes:
    first, *_rest = valid_journal().split(b"\n")
    return first + b"\n" + line + b"\n" + first.replace(b'"entry_id":"', b'"entry_id":"f', 1) + b"\n"


def good_line_with(field: str, raw: str) -> bytes:
    return _set_json_field(valid_journal().split(b"\n")[0], field, raw)


NAMED_JOURNAL_CASES = {
    "deep-nesting-line": b"[" * DEEP + b"]" * DEEP,
    "deep-nesting-field": good_line_with("item", "[" * DEEP + "]" * DEEP),
    "timestamp-dict": good_line_with("timestamp", '{"a": 1}'),
    "timestamp-string": good_line_with("timestamp", '"yesterday"'),
    "timestamp-infinite": good_line_with("timestamp", "1e999"),
    "retry-count-huge": good_line_with("retry_count", "1" + "0" * 400),
    "retry-count-list": good_line_with("retry_count", "[1]"),
    "error-type-number": good_line_with("error_type", "5"),
    "error-message-list": good_line_with("error_message", '["a"]'),
    "reason-unknown": good_line_with("reason", '"gremlins"'),
    "traceback-dict": good_line_with("traceback", "{}"),
    "metadata-list": good_line_with("metadata", "[1, 2]"),
    "item-codec-number": good_line_with("item_codec", "7"),
    "cloudpickle-not-base64": good_line_with("item_codec", '"cloudpickle"'),
    "invalid-utf8": good_line_with("error_message", '"ok"').replace(b'"ok"', b'"\xff\xfe"'),
}


@pytest.mark.parametrize("name", sorted(NAMED_JOURNAL_CASES))
def test_named_corrupt_record_is_dlq_corrupt_error_or_skipped_and_counted(tmp_path, name):
    """Why: RecursionError on open; TypeError later in get_summary() for wrong field types."""
    data = journal_with_middle(NAMED_JOURNAL_CASES[name])
    with open(tmp_path / "dlq.jsonl", "wb") as handle:
        handle.write(data)
    with pytest.raises(DLQCorruptError) as info:
        open_queue(str(tmp_path), strict=True)
    assert info.value.line == 2
    queue = open_queue(str(tmp_path), strict=False)
    try:
        summary = use(queue)
        assert summary["corrupt_skipped"] == 1 and summary["total_entries"] == 2
    finally:
        queue.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["deep-nesting-line", "timestamp-dict", "retry-count-huge"])
def test_cli_reports_a_corrupt_journal_with_exit_3_file_and_line(tmp_path, name):
    """Why: the CLI exited 1 with a Python traceback."""
    with open(tmp_path / "dlq.jsonl", "wb") as handle:
        handle.write(journal_with_middle(NAMED_JOURNAL_CASES[name]))
    for command in ("summary", "list"):
        done = subprocess.run(
            [sys.executable, "-m", "amorsize", "dlq", command, str(tmp_path)],
            capture_output=True, text=True, timeout=100, env=dict(os.environ, PYTHONPATH=ROOT),
        )
        assert done.returncode == 3, (command, done.returncode, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert str(tmp_path / "dlq.jsonl") in done.stderr and "line 2" in done.stderr


# --- checkpoints ---------------------------------------------------------------------------

CHECKPOINT_FIELDS = ("version", "fingerprint", "segments")


def check_checkpoint(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    dlq = DeadLetterQueue(DLQPolicy(directory=os.path.dirname(path), auto_persist=False))
    try:
        results = execute(fails_on_thirds, CHECKPOINT_ITEMS, n_jobs=1, dlq=dlq,
                          checkpoint=Checkpoint(path))
    except CheckpointMismatchError as exc:
        assert path in str(exc) and ("fresh" in str(exc) or "delete" in str(exc))
        return
    assert len(results) == len(CHECKPOINT_ITEMS)
    for value in results:
        if isinstance(value, Failure):  # a Failure names its entry and error as text
            assert isinstance(value.entry_id, str) and isinstance(value.error_type, str)


def replace_subtree(document: Any, path: List[int], value: Any) -> Any:
    """``document`` with the node reached by walking ``path`` (indices wrap) replaced."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    if isinstance(document, dict):
        key = sorted(document)[path[0] % len(document)]
        return {**document, key: replace_subtree(document[key], path[1:], value)}
    index = path[0] % len(document)
    return [*document[:index], replace_subtree(document[index], path[1:], value), *document[index + 1:]]


@st.composite
def mutated_checkpoints(draw: st.DrawFn) -> bytes:
    data = valid_checkpoint()
    if draw(st.booleans()):  # structure-aware: a subtree of the right document, wrong shape
        document = json.loads(data)
        walk = draw(st.lists(st.integers(0, 50), min_size=1, max_size=6))
        value = draw(WRONG_VALUES | JSON_VALUES | st.sampled_from([-5, 10**6, "cloudpickle"]))
        return json.dumps(replace_subtree(document, walk, value)).encode()
    for change in draw(mutations(CHECKPOINT_FIELDS)):
        data = apply(data, change)
    return data


@pytest.mark.timeout(300)
@FUZZ
@given(mutated_checkpoints())
def test_any_checkpoint_bytes_load_or_raise_checkpoint_mismatch_error(tmp_path, data):
    check_checkpoint(str(tmp_path / "run.ckpt"), data)


def shape(**changes: Any) -> Callable[[dict], Any]:
    def build(document: dict) -> Any:
        return {**document, **changes}
    return build


def segment(**changes: Any) -> Callable[[dict], Any]:
    def build(document: dict) -> Any:
        segments = [dict(s) for s in document["segments"]]
        segments[0].update(changes)
        return {**document, "segments": segments}
    return build


def valid_document() -> dict:
    return json.loads(valid_checkpoint())


MALFORMED_CHECKPOINTS = {
    "top-level-list": lambda d: [d],
    "top-level-string": lambda d: "checkpoint",
    "top-level-null": lambda d: None,
    "segments-dict": shape(segments={"0": {}}),
    "segments-null": shape(segments=None),
    "segment-number": shape(segments=[1]),
    "segment-empty": shape(segments=[{}]),
    "start-string": segment(start="0"),
    "start-negative": segment(start=-5),
    "start-past-the-end": segment(start=10**6),
    "start-float": segment(start=1.5),
    "codec-unknown": segment(codec="bogus"),
    "values-string": segment(values="abc"),
    "values-dict": segment(values={"a": 1}),
    "values-too-long": segment(values=list(range(50))),
    "failures-short-row": segment(failures=[[0, "id"]]),
    "failures-position-out-of-range": segment(failures=[[99, "id", "E", "m", "exception"]]),
    "failures-position-string": segment(failures=[["x", "id", "E", "m", "exception"]]),
    "failures-string": segment(failures="abc"),
    "overlapping-segments": lambda d: {**d, "segments": d["segments"] + d["segments"]},
    "deep-nesting": lambda d: {**d, "segments": json.loads("[" * 500 + "]" * 500)},
}


@pytest.mark.parametrize("name", sorted(MALFORMED_CHECKPOINTS))
def test_checkpoint_of_a_wrong_shape_raises_checkpoint_mismatch_error(tmp_path, name):
    """Why: 13 of 21 malformed shapes raised AttributeError, KeyError, ... or AssertionError."""
    path = str(tmp_path / "run.ckpt")
    data = json.dumps(MALFORMED_CHECKPOINTS[name](valid_document())).encode()
    with open(path, "wb") as handle:
        handle.write(data)
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path), auto_persist=False))
    with pytest.raises(CheckpointMismatchError) as info:
        execute(fails_on_thirds, CHECKPOINT_ITEMS, n_jobs=1, dlq=dlq, checkpoint=Checkpoint(path))
    assert path in str(info.value) and ("fresh" in str(info.value) or "delete" in str(info.value))


@pytest.mark.parametrize("text", ["[" * DEEP + "]" * DEEP, '{"segments": ' + "[" * DEEP + "]" * DEEP + "}"])
def test_checkpoint_nested_100k_levels_raises_checkpoint_mismatch_error(tmp_path, text):
    path = str(tmp_path / "run.ckpt")
    with open(path, "w") as handle:
        handle.write(text)
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path), auto_persist=False))
    with pytest.raises(CheckpointMismatchError):
        execute(fails_on_thirds, CHECKPOINT_ITEMS, n_jobs=1, dlq=dlq, checkpoint=Checkpoint(path))


def test_the_valid_files_load():
    """The fuzzers start from files that load: otherwise every mutation would 'pass'."""
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "dlq.jsonl"), "wb") as handle:
            handle.write(valid_journal())
        queue = open_queue(directory, strict=True)
        assert len(queue) == 4
        queue.close()
        path = os.path.join(directory, "run.ckpt")
        with open(path, "wb") as handle:
            handle.write(valid_checkpoint())
        calls: List[int] = []
        dlq = DeadLetterQueue(DLQPolicy(directory=directory, auto_persist=False))

        def counting(x: int) -> int:
            calls.append(x)
            return fails_on_thirds(x)

        with pytest.raises(CheckpointMismatchError):  # another function: refused, as designed
            execute(counting, CHECKPOINT_ITEMS, n_jobs=1, dlq=dlq, checkpoint=Checkpoint(path))
        results = execute(fails_on_thirds, CHECKPOINT_ITEMS, n_jobs=1, dlq=dlq,
                          checkpoint=Checkpoint(path))
        assert [r for i, r in enumerate(results) if i % 3] == [i * 10 for i in CHECKPOINT_ITEMS if i % 3]
