"""Worker side: run one chunk, and encode its result for the trip back.

Every backend (the process pool, the in-process pool, engines in plugins/) runs
chunks with :func:`run_chunk` and ships the outcome with :func:`encode_result`,
so item errors never become engine errors and every outcome can be deserialized
by the parent: an unpicklable result becomes an ``unpicklable_result`` failure in
the worker instead of a hang or a crash in the parent.

**The exception object.** When the run raises on failure (``spec.keep_error``),
the first failing item's exception rides back in :attr:`ChunkResult.error` if it
survives a pickle round trip in the worker; otherwise only its text does (the
DLQ entry), and the parent raises a ``TaskFailedError`` carrying that text.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cloudpickle

from amorsize.backends import ChunkResult, ChunkSpec, ChunkTask
from amorsize.backends.aio import run_async_chunk
from amorsize.backends.loops import Outcome, Partial, run_blocks, run_plain, run_tracked
from amorsize.failure import failure_entry, failure_of
from amorsize.serialization import PickledValue, short_repr, unpack_transported
from amorsize.tracebacks import traceback_text

#: True in a worker process of a run: an execute() called there runs serially in it.
IN_WORKER = False


def run_chunk(
    spec: ChunkSpec,
    task: ChunkTask,
    progress: Optional[Any] = None,
    clock: Optional[Callable[[], float]] = time.monotonic,
    stop_at_failure: bool = False,
    begin: int = 0,
    partial: Optional[Partial] = None,
) -> ChunkResult:
    """Run every item of ``task`` (from position ``begin``); never raises for an item's error.

    Args:
        progress: optional shared array; slot 0 gets the position of the item being
            run and slot 1 its start time (``clock``), so the parent can tell which
            item a crashed or stuck worker was running.
        clock: None to leave slot 1 alone (no timeout to enforce): reading the clock
            per item costs more than a tiny task.
        stop_at_failure: return right after the first failed item (its values cover
            the items up to it): the in-process backend records each failure before the
            next item starts.
        begin: resume the task at this position (the result starts there): the
            in-process backend goes on after a failure without copying the rest.
        partial: where another thread can read the values so far (the threads
            backend keeps them when an item times out).
    """
    if spec.concurrency is not None:  # an async def function: see amorsize.backends.aio
        return run_async_chunk(spec, task, progress)
    values: List[Any] = []
    out = Outcome(spec, task, begin)
    if partial is not None:
        partial.values, partial.outcome, partial.started = values, out, time.monotonic()
    started = time.perf_counter()
    slots = _fast_slots(progress)
    simple = spec.budget is None and spec.retry is None and spec.rate_limit is None
    if simple and slots is None:
        run_plain(out, values, stop_at_failure)
    elif simple and clock is None and task.report_every > 1:
        run_blocks(out, values, slots, stop_at_failure)
    else:
        run_tracked(out, values, slots, clock, stop_at_failure)
    seconds = time.perf_counter() - started
    return ChunkResult(task.chunk_id, task.start + begin, values, out.failures, seconds, error=out.kept)


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
    if result.error is not None:
        shipped = _RemoteError(result.error) if _survives_pickle(result.error) else None
        result = replace(result, error=shipped)  # type: ignore[arg-type]  # unpickles as the error
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
    safe = replace(result, values=values, failures=failures, packed_values=True)
    return pickle.dumps(safe, protocol=pickle.HIGHEST_PROTOCOL)


class _RemoteTraceback(Exception):
    """The ``__cause__`` of an exception shipped from a worker: its traceback text there."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _RemoteError:
    """Pickles as ``error`` with the worker's traceback text as its ``__cause__``.

    Pickling drops an exception's traceback and cause; this carries the text across
    (CPython's ``concurrent.futures.process._ExceptionWithTraceback``).
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.text = traceback_text(error) or f"{type(error).__name__}: {error}\n"

    def __reduce__(self) -> Any:
        return _rebuild_error, (self.error, self.text)


def _rebuild_error(error: BaseException, text: str) -> BaseException:
    error.__cause__ = _RemoteTraceback(f'\n"""\n{text}"""')
    return error


def _survives_pickle(error: BaseException) -> bool:
    # A round trip, not just dumps: an exception whose __init__ takes other arguments
    # than its args pickles fine and fails to load, which would break the whole result.
    try:
        pickle.loads(pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))
        return True
    except Exception:
        return False


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
