"""Every malformed checkpoint is a named error (issue 13, "Deliver" 4); journals: test_corrupt_journal.py.

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

import json
import os
import tempfile
from typing import Any, Callable, List

import pytest
from fuzz_mutations import (
    CHECKPOINT_ITEMS,
    DEEP,
    FUZZ,
    JSON_VALUES,
    WRONG_VALUES,
    apply,
    fails_on_thirds,
    mutations,
    open_queue,
    valid_checkpoint,
    valid_journal,
)
from hypothesis import given
from hypothesis import strategies as st

from amorsize import Checkpoint, CheckpointMismatchError, DeadLetterQueue, DLQPolicy, Failure, execute

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

