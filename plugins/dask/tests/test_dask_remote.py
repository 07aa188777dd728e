"""The worker-side task function, run in this process (no cluster)."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")
pytest.importorskip("amorsize_dask")

import pickle

import cloudpickle
import msgpack
import pytest
from amorsize_dask import _remote
from amorsize_dask._remote import run_task

from amorsize.backends import ChunkResult, ChunkSpec, ChunkTask
from amorsize.failure import is_failure


def _spec(func) -> bytes:
    return cloudpickle.dumps(ChunkSpec(func, None, True, "tests.func"))


def _run(spec_bytes: bytes, task: ChunkTask, task_bytes=None) -> ChunkResult:
    data = run_task(
        spec_bytes, f"token-{id(spec_bytes)}", task_bytes or pickle.dumps(task),
        (task.chunk_id, task.start, len(task.items)), "tests.func", True, None, "topic", "key",
    )
    return pickle.loads(data)


@pytest.mark.timeout(30)
def test_item_errors_come_back_as_failure_records() -> None:
    result = _run(_spec(lambda x: 10 // x), ChunkTask(3, 100, [5, 0, 2]))
    assert result.chunk_id == 3 and result.start == 100
    assert result.values[0] == 2 and is_failure(result.values[1]) and result.values[2] == 5
    (failure,) = result.failures
    assert failure.error_type == "ZeroDivisionError" and failure.metadata["index"] == 101


@pytest.mark.timeout(30)
def test_a_function_that_cannot_be_loaded_fails_every_item() -> None:
    result = _run(b"not a pickle", ChunkTask(0, 7, ["a", "b"]))
    assert all(is_failure(v) for v in result.values)
    assert [f.metadata["index"] for f in result.failures] == [7, 8]
    assert "could not be loaded on the Dask worker" in result.failures[0].error_message


@pytest.mark.timeout(30)
def test_items_that_cannot_be_loaded_fail_every_item() -> None:
    result = _run(_spec(abs), ChunkTask(0, 0, [1, 2]), task_bytes=b"\x80garbage")
    assert len(result.failures) == 2
    assert "the chunk's items could not be loaded" in result.failures[0].error_message


@pytest.mark.timeout(30)
def test_loaded_specs_are_cached_per_run_and_bounded() -> None:
    for n in range(_remote.SPEC_CACHE_SIZE + 3):
        _remote._load_spec(f"run-{n}", _spec(abs))
    assert len(_remote._specs) == _remote.SPEC_CACHE_SIZE


@pytest.mark.timeout(30)
def test_what_crosses_to_the_worker_and_back_pickles() -> None:
    assert pickle.loads(pickle.dumps(run_task)) is run_task  # by reference: workers import it


@pytest.mark.timeout(30)
def test_the_watchdog_reports_a_timeout_the_scheduler_event_log_can_store(monkeypatch) -> None:
    """What the watchdog really sends: one log_event to the run's topic, msgpack-safe."""
    import os
    from types import SimpleNamespace

    import distributed.utils

    def log_event(**kwargs):  # never called: sync is replaced below
        raise AssertionError("called outside sync()")

    worker = SimpleNamespace(address="tcp://127.0.0.1:1", loop=object(),
                             scheduler=SimpleNamespace(log_event=log_event))
    sent = []
    monkeypatch.setattr(_remote, "_current_worker", lambda: worker)
    monkeypatch.setattr(distributed.utils, "sync",
                        lambda loop, func, **kwargs: sent.append((loop, func, kwargs)))
    dog = _remote._Watchdog([3, 0.0], 1.0, "amorsize-timeouts-abc", "amorsize-abc-1")
    dog._report(3)
    ((loop, func, kwargs),) = sent
    assert loop is worker.loop and func is log_event
    assert kwargs["topic"] == "amorsize-timeouts-abc"
    assert kwargs["callback_timeout"] == _remote.REPORT_TIMEOUT_SECONDS
    msg = kwargs["msg"]
    assert msg == {"key": "amorsize-abc-1", "position": 3, "pid": os.getpid(),
                   "worker": "tcp://127.0.0.1:1"}
    assert msgpack.unpackb(msgpack.packb(msg)) == msg  # the scheduler's event log format
