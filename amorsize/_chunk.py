"""Worker-side chunk execution and the records that cross the process boundary.

Every backend (the local process pool, and engines in plugins/) runs chunks with
:func:`run_chunk` and ships the outcome with :func:`encode_result`, so item
errors never become engine errors and every outcome can be deserialized by the
parent: an unpicklable result becomes an ``unpicklable_result`` failure in the
worker instead of a hang or a crash in the parent.
"""

from __future__ import annotations

import itertools
import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cloudpickle

from amorsize.dlq.entry import DLQEntry
from amorsize.failure import failure_entry, failure_of
from amorsize.retry import call_with_retry
from amorsize.serialization import PickledValue, short_repr, unpack_transported


@dataclass(frozen=True)
class ChunkTask:
    """A contiguous run of input items: positions ``start .. start+len(items)-1``."""

    chunk_id: int
    start: int
    items: List[Any]


@dataclass(frozen=True)
class ChunkSpec:
    """What every chunk of one run shares; sent to each worker once."""

    func: Callable[[Any], Any]
    retry: Any
    include_traceback: bool
    function_name: str


@dataclass(frozen=True)
class ChunkResult:
    """A finished chunk: one value per item (a Failure where it failed) and the failures."""

    chunk_id: int
    start: int
    values: List[Any]
    failures: List[DLQEntry]
    compute_seconds: float
    #: Some values were pre-pickled with cloudpickle (``PickledValue``) to cross over.
    packed_values: bool = False


def run_chunk(
    spec: ChunkSpec,
    task: ChunkTask,
    progress: Optional[Any] = None,
    clock: Optional[Callable[[], float]] = time.monotonic,
) -> ChunkResult:
    """Run every item of ``task``; never raises for an item's error.

    Args:
        progress: optional shared array; slot 0 gets the position of the item being
            run and slot 1 its start time (``clock``), so the parent can tell which
            item a crashed or stuck worker was running.
        clock: None to leave slot 1 alone (no timeout to enforce): reading the clock
            per item costs more than a tiny task.
    """
    func, retry = spec.func, spec.retry
    values: List[Any] = []
    failures: List[DLQEntry] = []
    begin = time.perf_counter()
    slots = _fast_slots(progress)
    if slots is None and retry is None:
        _run_plain(spec, task, values, failures)
        return ChunkResult(task.chunk_id, task.start, values, failures, time.perf_counter() - begin)
    for position, item in enumerate(task.items):
        if slots is not None:
            if clock is not None:
                slots[1] = clock()
            slots[0] = position
        value: Optional[BaseException]
        if retry is None:
            try:
                values.append(func(item))
                continue
            except Exception as exc:
                value, attempts = exc, 1
        else:
            outcome = call_with_retry(func, item, retry)
            if outcome.ok:
                values.append(outcome.value)
                continue
            value, attempts = outcome.error, outcome.attempts
        assert value is not None
        entry = failure_entry(
            item, value, attempts=attempts, function=spec.function_name,
            include_traceback=spec.include_traceback, extra={"index": task.start + position},
        )
        failures.append(entry)
        values.append(failure_of(entry))
    return ChunkResult(task.chunk_id, task.start, values, failures, time.perf_counter() - begin)


def _run_plain(spec: ChunkSpec, task: ChunkTask, values: List[Any], failures: List[DLQEntry]) -> None:
    """The in-process path without retry or progress slots: as fast as a list comprehension.

    ``list.extend`` keeps the values appended before ``func`` raised, so ``len(values)``
    is the position of the failing item; the map resumes after it.
    """
    items, func = task.items, spec.func
    position = 0
    while position < len(items):
        try:
            values.extend(map(func, itertools.islice(items, position, None)))
            return
        except Exception as exc:
            position = len(values)
            entry = failure_entry(
                items[position], exc, attempts=1, function=spec.function_name,
                include_traceback=spec.include_traceback,
                extra={"index": task.start + position},
            )
            failures.append(entry)
            values.append(failure_of(entry))
            position += 1


def _fast_slots(progress: Optional[Any]) -> Optional[Any]:
    # A memoryview over a shared ctypes array writes the same memory, in half the time.
    if progress is None:
        return None
    try:
        view = memoryview(progress).cast("B").cast("d")
    except (TypeError, ValueError):
        return progress
    return view if len(view) >= 2 else progress


def encode_result(result: ChunkResult, spec: ChunkSpec) -> bytes:
    """Serialize ``result``; values that cannot be pickled become failures, never errors."""
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    values = list(result.values)
    failures = list(result.failures)
    for position, value in enumerate(values):
        packed, error = _packable(value)
        if error is None:
            values[position] = packed
            continue
        entry = failure_entry(
            None, error, attempts=1,
            function=spec.function_name, include_traceback=spec.include_traceback,
            reason="unpicklable_result",
            extra={"index": result.start + position, "result_repr": short_repr(value)},
        )
        failures.append(entry)
        values[position] = failure_of(entry)
    safe = ChunkResult(
        result.chunk_id, result.start, values, failures, result.compute_seconds, packed_values=True
    )
    return pickle.dumps(safe, protocol=pickle.HIGHEST_PROTOCOL)


def _packable(value: Any) -> Tuple[Any, Optional[BaseException]]:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return value, None
    except Exception:
        pass
    try:
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return PickledValue(data, type(value).__qualname__, short_repr(value)), None
    except Exception as exc:
        return None, exc


def finish_in_parent(result: ChunkResult, items: Sequence[Any]) -> None:
    """Parent side: unpack pre-pickled values, and give failures the parent's own items.

    The parent still holds the chunk's input items, so failure entries get the original
    objects back instead of the worker's serialized copies.
    """
    if result.packed_values:
        values = result.values
        for position, value in enumerate(values):
            if isinstance(value, PickledValue):
                values[position] = unpack_transported(value)
    for entry in result.failures:
        entry.item = items[entry.metadata["index"] - result.start]
