"""Worker side: the one function every Dask task runs.

:func:`run_task` receives only bytes and plain values, so Dask never has to
deserialize user code before the task starts. It loads the run's
:class:`~amorsize.backends.ChunkSpec` (cloudpickle; cached per worker process and
run), loads the chunk, runs it with :func:`~amorsize.backends.run_chunk` and ships it
with :func:`~amorsize.backends.encode_result`, exactly like the local pool. If the
function or an item cannot be loaded on the worker (a module the worker cannot
import), every item of the chunk becomes an ordinary failure record instead of a
Dask error or a hang.

**Timeouts.** With a per-item timeout, a watchdog thread watches the chunk's
two-slot progress list (position of the running item, its start time). When an
item overruns, the watchdog reports ``{key, position}`` to the scheduler's event
log under the run's topic (an acknowledged RPC, so the report is stored before
the process goes away), then ends the worker process with ``os._exit``: a
running Python thread cannot be stopped any other way. The nanny starts a fresh
worker; the parent reads the report and turns the lost task into
``ChunkLost(position=..., reason="timeout")``.
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from amorsize import DLQEntry
from amorsize.backends import (
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    encode_result,
    failure_entry,
    failure_of,
    run_chunk,
)

#: How often the watchdog compares the running item's age with the timeout.
WATCHDOG_POLL_SECONDS = 0.05
#: How long the watchdog waits for the scheduler to acknowledge a timeout report.
REPORT_TIMEOUT_SECONDS = 5.0
#: Exit code of a worker process ended by the watchdog (the nanny restarts it).
TIMEOUT_EXIT_CODE = 75
#: Loaded specs kept per worker process (one per recent run).
SPEC_CACHE_SIZE = 4

_specs: collections.OrderedDict[str, Tuple[Optional[ChunkSpec], Optional[BaseException]]] = (
    collections.OrderedDict()
)
_specs_lock = threading.Lock()


def _load_spec(token: str, spec_bytes: bytes) -> Tuple[Optional[ChunkSpec], Optional[BaseException]]:
    with _specs_lock:
        if token in _specs:
            _specs.move_to_end(token)
            return _specs[token]
    try:
        spec: ChunkSpec = pickle.loads(spec_bytes)
        spec.restore_source()  # tracebacks name the user's script, not <dynamic-code>
        loaded: Tuple[Optional[ChunkSpec], Optional[BaseException]] = (spec, None)
    except BaseException as exc:  # an import error on the worker is the usual cause
        loaded = (None, _load_error("the function", exc))
    with _specs_lock:
        _specs[token] = loaded
        while len(_specs) > SPEC_CACHE_SIZE:
            _specs.popitem(last=False)
    return loaded


def _load_error(what: str, exc: BaseException) -> BaseException:
    error = RuntimeError(
        f"{what} could not be loaded on the Dask worker ({type(exc).__name__}: {exc}); "
        "is its module installed and importable on every worker?"
    )
    error.__cause__ = exc
    return error


def _all_failed(
    error: BaseException, chunk_id: int, start: int, n_items: int, function: str, include_traceback: bool
) -> ChunkResult:
    values: List[Any] = []
    failures: List[DLQEntry] = []
    for position in range(n_items):
        entry = failure_entry(
            None, error, attempts=1, function=function, include_traceback=include_traceback,
            extra={"index": start + position},
        )
        failures.append(entry)
        values.append(failure_of(entry))
    return ChunkResult(chunk_id, start, values, failures, 0.0)


class _Watchdog(threading.Thread):
    """Ends this worker process when the running item overruns ``timeout``."""

    def __init__(self, progress: List[float], timeout: float, topic: str, key: str) -> None:
        super().__init__(name="amorsize-watchdog", daemon=True)
        self.progress, self.timeout, self.topic, self.key = progress, timeout, topic, key
        self.finished = threading.Event()
        self.worker = _current_worker()

    def run(self) -> None:
        while not self.finished.wait(WATCHDOG_POLL_SECONDS):
            started = self.progress[1]
            if time.monotonic() - started > self.timeout and not self.finished.is_set():
                self._report(int(self.progress[0]))
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(TIMEOUT_EXIT_CODE)

    def _report(self, position: int) -> None:
        msg: Dict[str, Any] = {"key": self.key, "position": position, "pid": os.getpid()}
        worker = self.worker
        if worker is None:
            return
        msg["worker"] = str(getattr(worker, "address", ""))
        try:
            from distributed.utils import sync

            sync(
                worker.loop, worker.scheduler.log_event, topic=self.topic, msg=msg,
                callback_timeout=REPORT_TIMEOUT_SECONDS,
            )
        except BaseException:
            pass  # the parent then sees a plain worker crash and bisects


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except Exception:
        return None


def run_task(
    spec_bytes: bytes,
    token: str,
    task_bytes: bytes,
    chunk: Tuple[int, int, int],
    function: str,
    include_traceback: bool,
    timeout: Optional[float],
    topic: str,
    key: str,
) -> bytes:
    """Run one chunk on a Dask worker; return :func:`encode_result` bytes. Never raises for items.

    Args:
        chunk: ``(chunk_id, start, n_items)``, known even if ``task_bytes`` cannot be loaded.
        timeout: per-item seconds; overrunning ends this worker process (see the module doc).
        topic, key: where the watchdog reports a timeout, and under which task key.
    """
    spec, error = _load_spec(token, spec_bytes)
    fallback = spec or ChunkSpec(None, None, include_traceback, function)  # type: ignore[arg-type]
    task: Optional[ChunkTask] = None
    if error is None:
        try:
            task = pickle.loads(task_bytes)
        except BaseException as exc:
            error = _load_error("the chunk's items", exc)
    if spec is None or task is None:
        assert error is not None
        return encode_result(_all_failed(error, *chunk, function, include_traceback), fallback)
    progress: List[float] = [0, time.monotonic()]
    watchdog = _Watchdog(progress, timeout, topic, key) if timeout is not None else None
    if watchdog is not None:
        watchdog.start()
    try:
        result = run_chunk(spec, task, progress)
    finally:
        if watchdog is not None:
            watchdog.finished.set()
    return encode_result(result, spec)
