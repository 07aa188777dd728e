"""The public backend package: records, the registry, and the in-process backend."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, List, Optional

import pytest

import amorsize.backends
from amorsize import DeadLetterQueue, DLQPolicy, execute, imap, is_failure
from amorsize.backends import (
    ChunkDone,
    ChunkLost,
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    InProcessBackend,
    InProcessPool,
    ProcessBackend,
    available_backends,
    encode_result,
    register_backend,
    resolve_backend,
    run_chunk,
)
from amorsize.errors import BackendNotFoundError, InvalidArgumentError
from amorsize.retry import RetryPolicy
from tests._cycles import cyclic_garbage_of

pytestmark = pytest.mark.timeout(60)


def pid_of(_x: Any) -> int:
    return os.getpid()


def inverse(x: int) -> float:
    return 1 / x


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: its __init__ takes two arguments."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def raise_two_arg(x: int) -> int:
    raise TwoArgError(x, f"bad {x}")


# -- records ------------------------------------------------------------------------------


def test_records_that_cross_processes_pickle() -> None:
    spec = ChunkSpec(abs, None, True, "builtins.abs", keep_error=True)
    task = ChunkTask(3, 10, [-1, -2])
    result = run_chunk(spec, task)
    for record in (spec, task, result, ChunkDone(task, result),
                   ChunkLost(task, 1, "timeout", {"pid": 7})):
        assert pickle.loads(pickle.dumps(record)) == record


def test_a_failure_under_retry_leaves_no_reference_cycle() -> None:
    # Each failed item's error (and the frames its traceback holds) is freed at once,
    # not by the collector: see tests/_cycles.py.
    spec = ChunkSpec(inverse, RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False), True, "inverse")
    leaked = cyclic_garbage_of(ZeroDivisionError, lambda: run_chunk(spec, ChunkTask(0, 0, [0] * 20)))
    assert not leaked, f"{len(leaked)} of 20 failures left in reference cycles"


def test_the_first_error_is_kept_only_when_asked() -> None:
    task = ChunkTask(0, 0, [1, 0, 2, 0])
    kept = run_chunk(ChunkSpec(inverse, None, True, "inverse", keep_error=True), task)
    assert isinstance(kept.error, ZeroDivisionError) and kept.error.__traceback__ is not None
    assert [f.metadata["index"] for f in kept.failures] == [1, 3]
    plain = run_chunk(ChunkSpec(inverse, None, True, "inverse"), task)
    assert plain.error is None and len(plain.failures) == 2


def test_a_shipped_error_carries_its_worker_traceback_as_cause() -> None:
    spec = ChunkSpec(inverse, None, False, "inverse", keep_error=True)
    result: ChunkResult = pickle.loads(encode_result(run_chunk(spec, ChunkTask(0, 0, [0])), spec))
    assert type(result.error) is ZeroDivisionError
    cause = str(result.error.__cause__)
    assert "Traceback (most recent call last)" in cause and "in inverse" in cause


def test_an_error_that_cannot_be_rebuilt_is_not_shipped() -> None:
    import copyreg

    copyreg.dispatch_table.pop(TwoArgError, None)  # undo tblib (installed by dask's import)
    spec = ChunkSpec(raise_two_arg, None, True, "raise_two_arg", keep_error=True)
    result: ChunkResult = pickle.loads(encode_result(run_chunk(spec, ChunkTask(0, 0, [5])), spec))
    assert result.error is None
    (entry,) = result.failures
    assert entry.error_type.endswith("TwoArgError") and entry.error_message == "bad 5"


# -- registry -----------------------------------------------------------------------------


def test_builtin_backends_are_listed_and_resolved() -> None:
    assert {"processes", "local", "in_process"} <= set(available_backends())
    assert isinstance(resolve_backend(None), ProcessBackend)
    assert isinstance(resolve_backend("local"), ProcessBackend)
    assert isinstance(resolve_backend("in_process"), InProcessBackend)


def test_an_unknown_backend_name_suggests_the_nearest() -> None:
    with pytest.raises(BackendNotFoundError, match="Did you mean 'in_process'"):
        resolve_backend("in_proces")


def test_a_missing_dask_plugin_suggests_installing_it_from_pypi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amorsize.backends, "_entry_points", lambda: [])  # as if not installed
    with pytest.raises(BackendNotFoundError) as caught:
        execute(abs, [1, 2], backend="dask")
    message = str(caught.value)
    assert "pip install amorsize-dask" in message
    assert "plugins/" not in message
    assert "installed backends: " in message and "processes" in message


def test_an_unknown_backend_name_lists_the_installed_backends_not_a_plugin_path() -> None:
    with pytest.raises(BackendNotFoundError) as caught:
        resolve_backend("ray")
    message = str(caught.value)
    assert "plugins/" not in message and "pip install" not in message
    for name in available_backends():
        assert name in message


class CountingBackend:
    """Runs chunks in this process, counting the chunks it was given."""

    name = "counting"
    chooses_width = True

    def __init__(self) -> None:
        self.chunks: List[ChunkTask] = []

    def open(self, spec: ChunkSpec, *, n_jobs: Optional[int], timeout: Optional[float],
             start_method: Optional[str]) -> Any:
        assert n_jobs is None  # it chooses its own width
        return RecordingPool(spec, self.chunks)


class RecordingPool(InProcessPool):
    def __init__(self, spec: ChunkSpec, chunks: List[ChunkTask]) -> None:
        super().__init__(spec)
        self.chunks = chunks

    def submit(self, task: ChunkTask) -> None:
        self.chunks.append(task)
        super().submit(task)


def test_a_registered_backend_runs_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amorsize.backends, "_registered", {})  # forget it after the test
    made: List[CountingBackend] = []

    def factory() -> CountingBackend:
        made.append(CountingBackend())
        return made[-1]

    register_backend("counting-test", factory)
    assert "counting-test" in available_backends()
    assert execute(abs, [-1, -2, -3], backend="counting-test", chunksize=2) == [1, 2, 3]
    (backend,) = made
    assert [t.items for t in backend.chunks] == [[-1, -2], [-3]]


@pytest.mark.parametrize("name", ["", "processes", "in_process", 3])
def test_builtin_names_cannot_be_replaced(name: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="name="):
        register_backend(name, CountingBackend)


# -- in process -----------------------------------------------------------------------------


def test_in_process_backend_runs_here_and_routes_failures() -> None:
    assert set(execute(pid_of, range(20), backend="in_process", chunksize=3)) == {os.getpid()}
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    out = list(imap(inverse, [1, 0, 4], backend="in_process", dlq=dlq))
    assert out[0] == 1.0 and is_failure(out[1]) and out[2] == 0.25
    assert [e.item for e in dlq.get_entries()] == [0]


def test_in_process_backend_refuses_a_timeout() -> None:
    with pytest.raises(InvalidArgumentError, match="timeout=5"):
        execute(abs, [1], backend="in_process", timeout=5)


def test_the_worked_example_in_the_docs_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amorsize.backends, "_registered", {})  # the example registers "here"
    text = (Path(__file__).resolve().parents[1] / "docs" / "backends.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    exec(compile(code, "docs/backends.md", "exec"), {"__name__": "docs_backends"})
    assert "here" in available_backends()
