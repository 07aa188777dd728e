"""A StopIteration raised by ``func`` is that item's failure, never the end of its chunk.

Before the fix, the worker ran a chunk as ``values.extend(map(func, items))``: a
StopIteration from ``func`` ended ``extend`` quietly, so the processes backend
returned the first 5 of 10 results with no error and the in-process and thread
backends raised ``AssertionError: positions never completed``. The dispatcher now
also refuses a chunk result with the wrong number of values.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from amorsize import AmorsizeError, DeadLetterQueue, DLQPolicy, execute, is_failure
from amorsize.backends import ChunkDone
from amorsize.backends.inprocess import InProcessBackend, InProcessPool

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaked_children")]

BAD = {3, 7}


def stop_at_bad(x: int) -> int:
    if x in BAD:
        raise StopIteration(f"no value for {x}")
    return x * 10


def runtime_error_from_stop(x: int) -> int:
    if x == 2:
        raise RuntimeError(f"own error {x}") from StopIteration("inner")
    return x


BACKENDS = [
    pytest.param({"n_jobs": 2, "chunksize": 10, "start_method": "fork"}, id="processes-fork"),
    pytest.param({"n_jobs": 1, "chunksize": 4, "start_method": "spawn"}, id="processes-spawn"),
    pytest.param({}, id="default"),
    pytest.param({"backend": "in_process"}, id="in_process"),
    pytest.param({"backend": "threads", "n_jobs": 2}, id="threads"),
    pytest.param({"backend": "processes", "timeout": 30, "chunksize": 10, "n_jobs": 1,
                  "start_method": "fork"}, id="processes-timed"),
]


@pytest.mark.parametrize("options", BACKENDS)
def test_stop_iteration_from_func_fails_only_its_item(options: Dict[str, Any]) -> None:
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    results = execute(stop_at_bad, range(12), dlq=dlq, **options)
    assert len(results) == 12
    for x, value in enumerate(results):
        if x in BAD:
            assert is_failure(value), (x, value)
        else:
            assert value == x * 10, (x, value)
    entries = dlq.get_entries()
    assert sorted(e.item for e in entries) == sorted(BAD)
    assert {e.error_type for e in entries} == {"StopIteration"}
    assert all("no value for" in e.error_message for e in entries)
    assert all("stop_at_bad" in (e.traceback or "") for e in entries)


def test_a_runtime_error_func_raises_from_stop_iteration_stays_a_runtime_error() -> None:
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    results = execute(runtime_error_from_stop, range(5), dlq=dlq, backend="in_process")
    assert [r for r in results if not is_failure(r)] == [0, 1, 3, 4]
    (entry,) = dlq.get_entries()
    assert (entry.error_type, entry.error_message) == ("RuntimeError", "own error 2")


class _ShortPool(InProcessPool):
    """Drops the last value of each chunk's result: a broken third-party backend."""

    def wait(self, timeout: Any) -> List[Any]:
        events = super().wait(timeout)
        for event in events:
            if isinstance(event, ChunkDone) and event.result.values:
                event.result.values.pop()
        return events


class _ShortBackend(InProcessBackend):
    name = "short"

    def open(self, spec: Any, **_options: Any) -> _ShortPool:
        return _ShortPool(spec)


def test_a_backend_returning_too_few_values_stops_the_run_loudly() -> None:
    with pytest.raises(AmorsizeError, match=r"'short' returned 9 values for a chunk of 10 items"):
        execute(abs, range(10), backend=_ShortBackend(), chunksize=10)
