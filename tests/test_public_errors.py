"""A failure test for every public error and every validated argument not covered elsewhere.

Each error is raised by a real operation (never constructed by hand), caught by the
public class, and by the builtin it also derives from, and names what went wrong.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from amorsize import (
    AmorsizeError,
    BackendNotFoundError,
    Checkpoint,
    CheckpointMismatchError,
    CircuitBreaker,
    DeadLetterQueue,
    DLQCorruptError,
    DLQError,
    DLQFileNotFoundError,
    DLQPolicy,
    InvalidArgumentError,
    InvalidTypeError,
    ItemTimeoutError,
    PickleNotAllowedError,
    RetryPolicy,
    TaskFailedError,
    execute,
    is_failure,
    replay_failed_items,
)

pytestmark = pytest.mark.timeout(90)

ERR = ValueError("boom")


def double(x: int) -> int:
    return x * 2


def as_pair(x: int) -> Any:
    return (x, x)  # a tuple: JSON cannot hold it exactly, so a checkpoint pickles it


def sleep_on(x: int, bad: int) -> int:
    if x == bad:
        time.sleep(60)
    return x


# -- Checkpoint's own validation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"path": 3}, "path=3"),
        ({"every_items": 0}, "every_items=0"),
        ({"every_items": True}, "every_items=True"),
        ({"every_items": 2.0}, "every_items=2.0"),
        ({"every_seconds": -1}, "every_seconds=-1"),
        ({"every_seconds": "30"}, "every_seconds='30'"),
        ({"every_seconds": True}, "every_seconds=True"),
        ({"every_seconds": float("nan")}, "every_seconds=nan"),
        ({"keep": "yes"}, "keep='yes'"),
        ({"allow_pickle": 1}, "allow_pickle=1"),
    ],
)
def test_checkpoint_rejects_a_bad_argument_naming_it(tmp_path: Path, kwargs: dict, named: str) -> None:
    kwargs = {"path": tmp_path / "run.ckpt", **kwargs}
    with pytest.raises(InvalidArgumentError) as info:
        Checkpoint(**kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AmorsizeError)
    assert named in str(info.value) and "expected" in str(info.value)


def test_checkpoint_accepts_its_documented_values(tmp_path: Path) -> None:
    ckpt = Checkpoint(tmp_path / "run.ckpt", every_items=1, every_seconds=0, keep=True, allow_pickle=True)
    assert (ckpt.every_items, ckpt.every_seconds, ckpt.keep) == (1, 0.0, True)
    assert Checkpoint(str(tmp_path / "b.ckpt"), every_seconds=None).every_seconds is None


# -- CheckpointMismatchError ----------------------------------------------------------------


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b"42"])
def test_an_unreadable_checkpoint_file_is_a_mismatch(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match="unreadable") as info:
        execute(double, [1, 2, 3], n_jobs=1, checkpoint=Checkpoint(path))
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)
    assert path.read_bytes() == content  # left alone for the user to inspect


def test_pickled_checkpoint_results_need_the_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    items = [1, 2, 3]
    assert execute(as_pair, items, n_jobs=1, checkpoint=Checkpoint(path, keep=True)) == [
        (1, 1), (2, 2), (3, 3)
    ]
    assert json.loads(path.read_text())["segments"][0]["codec"] == "cloudpickle"
    with pytest.raises(CheckpointMismatchError, match="allow_pickle=True"):
        execute(as_pair, items, n_jobs=1, checkpoint=Checkpoint(path))
    trusted = execute(as_pair, items, n_jobs=1, checkpoint=Checkpoint(path, allow_pickle=True))
    assert trusted == [(1, 1), (2, 2), (3, 3)]


# -- BackendNotFoundError ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["no-such-backend", 42])
def test_an_unknown_backend_raises_backend_not_found(backend: Any) -> None:
    with pytest.raises(BackendNotFoundError) as info:
        execute(double, range(3), backend=backend)
    assert type(info.value) is BackendNotFoundError
    assert isinstance(info.value, LookupError) and isinstance(info.value, AmorsizeError)
    assert f"backend={backend!r}" in str(info.value)


# -- replay_failed_items: bad dlq= and retry= -----------------------------------------------


@pytest.mark.parametrize("dlq", [None, "failed/", [1, 2]])
def test_replay_rejects_a_dlq_that_is_not_a_queue(dlq: Any) -> None:
    with pytest.raises(InvalidTypeError) as info:
        replay_failed_items(dlq, double)
    assert isinstance(info.value, TypeError) and f"dlq={dlq!r}" in str(info.value)


@pytest.mark.parametrize("retry", [3, "twice", RetryPolicy])
def test_replay_rejects_a_retry_that_is_not_a_policy(tmp_path: Path, retry: Any) -> None:
    queue = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    entry = queue.add(4, ERR)
    with pytest.raises(InvalidTypeError) as info:
        replay_failed_items(queue, double, retry=retry)
    assert isinstance(info.value, TypeError) and f"retry={retry!r}" in str(info.value)
    assert queue.get_entries() == [entry]  # nothing ran, nothing changed


# -- execute(): wrong types for circuit_breaker= and checkpoint= ------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("circuit_breaker", "open"), ("circuit_breaker", object()), ("checkpoint", "run.ckpt"),
     ("checkpoint", CircuitBreaker())],
)
def test_execute_rejects_a_wrong_type_naming_it(name: str, value: Any) -> None:
    with pytest.raises(InvalidTypeError) as info:
        execute(double, range(3), **{name: value})
    assert isinstance(info.value, TypeError)
    assert f"{name}={value!r}" in str(info.value)


# -- DLQError: every DLQ failure is caught by it, and by its builtin ------------------------


def test_a_missing_file_is_a_dlq_error_and_a_file_not_found_error(tmp_path: Path) -> None:
    queue = DeadLetterQueue(DLQPolicy(directory=str(tmp_path), auto_persist=False))
    with pytest.raises(DLQError) as info:
        queue.load(tmp_path / "nothing.jsonl")
    assert type(info.value) is DLQFileNotFoundError and isinstance(info.value, FileNotFoundError)
    assert "DLQ file not found" in str(info.value) and "nothing.jsonl" in str(info.value)


def test_a_corrupt_journal_is_a_dlq_error_and_a_value_error(tmp_path: Path) -> None:
    with DeadLetterQueue(DLQPolicy(directory=str(tmp_path))) as queue:
        queue.add(1, ERR)
        queue.add(2, ERR)
    journal = tmp_path / "dlq.jsonl"
    _first, second = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"{garbage\n" + second)
    with pytest.raises(DLQError) as info:
        DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    assert type(info.value) is DLQCorruptError and isinstance(info.value, ValueError)
    assert info.value.line == 1 and "strict=False" in str(info.value)


def test_a_refused_pickle_is_a_dlq_error_and_a_permission_error(tmp_path: Path) -> None:
    with DeadLetterQueue(DLQPolicy(directory=str(tmp_path))) as queue:
        queue.add({1, 2}, ERR)  # a set: stored as cloudpickle in the JSON format
    blind = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))  # allow_pickle off
    with pytest.raises(DLQError) as info:
        replay_failed_items(blind, len)
    assert type(info.value) is PickleNotAllowedError and isinstance(info.value, PermissionError)
    assert "allow_pickle=True" in str(info.value)


# -- ItemTimeoutError on the local backend (a real timeout) ----------------------------------


def test_a_real_timeout_is_recorded_as_item_timeout_error(no_leaked_children: None) -> None:
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    results = execute(functools.partial(sleep_on, bad=1), range(3), n_jobs=2, chunksize=1,
                      timeout=2.0, dlq=dlq, start_method="fork")
    assert results[0] == 0 and results[2] == 2 and is_failure(results[1])
    (entry,) = dlq.get_entries()
    assert entry.error_type == "ItemTimeoutError" and entry.reason == "timeout"
    assert entry.error_qualname == f"{ItemTimeoutError.__module__}.ItemTimeoutError"
    assert "timeout=2.0" in entry.error_message
    assert issubclass(ItemTimeoutError, TimeoutError) and issubclass(ItemTimeoutError, AmorsizeError)


def test_a_real_timeout_in_raise_mode_names_item_timeout_error(no_leaked_children: None) -> None:
    with pytest.raises(TaskFailedError) as info:
        execute(functools.partial(sleep_on, bad=1), range(3), n_jobs=2, chunksize=1, timeout=2.0,
                start_method="fork")
    assert info.value.error_type == "ItemTimeoutError" and info.value.reason == "timeout"
    assert info.value.item == 1 and str(info.value).startswith("[timeout] ItemTimeoutError")
