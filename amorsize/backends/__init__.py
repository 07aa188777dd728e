"""Execution backends: where chunks run. Public: third parties add their own.

A *backend* opens a *pool*; the dispatcher (:mod:`amorsize.run.dispatch`)
submits :class:`ChunkTask` records to the pool and reads back events:
:class:`ChunkDone` (the chunk ran; item errors are inside its result) or
:class:`ChunkLost` (the worker died or overran its timeout; ``position`` names
the item it was running, or None when the backend cannot tell, and the
dispatcher then bisects).

Built in: ``"processes"`` (worker processes on this machine, the default;
``"local"`` is an alias), ``"threads"`` (a thread pool in the caller's process,
for I/O) and ``"in_process"`` (chunks run in the caller's process). Others
register with :func:`register_backend` or, from an installed distribution,
under the entry-point group ``amorsize.backends`` (the Dask plugin registers
``"dask"``), so the core never imports them.

A pool runs each chunk with :func:`run_chunk` (worker side) and ships it with
:func:`encode_result`; see ``docs/backends.md`` for a worked example. The
helpers a backend needs are re-exported here, loaded on first use, so that
``import amorsize.backends`` stays cheap.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol

from amorsize._validate import check_callable, invalid_value
from amorsize.errors import BackendNotFoundError

if TYPE_CHECKING:
    from amorsize.dlq.entry import DLQEntry

ENTRY_POINT_GROUP = "amorsize.backends"
#: The backend of ``backend=None``.
DEFAULT_BACKEND = "processes"


# --- records that cross to workers and back ---------------------------------------


@dataclass(frozen=True)
class ChunkTask:
    """A contiguous run of input items: positions ``start .. start+len(items)-1``.

    ``report_every``: the worker writes its progress position once per this many
    items (the first of each block), not per item: for tiny items the write costs
    more than the item. A pool reports the position it read; the dispatcher knows
    the crash lies in ``[position, position + report_every)`` and runs that block
    again with ``report_every=1`` to find the item.
    """

    chunk_id: int
    start: int
    items: List[Any]
    report_every: int = 1


@dataclass(frozen=True)
class ChunkSpec:
    """What every chunk of one run shares; sent to each worker once.

    ``keep_error``: ship the first failing item's exception object back with the
    chunk (when it survives pickling), so ``on_failure="raise"`` can re-raise it.
    ``source_file``: the script a ``__main__`` function came from (it travels by value,
    and cloudpickle names its code ``<dynamic-code>``); a worker calls
    :meth:`restore_source` after loading the spec, so tracebacks name the user's file.
    ``rate_limit``: a :class:`~amorsize.RateLimit` each attempt waits for, at most
    ``timeout`` seconds after its item started. ``budget``: the run's failure budget
    (:mod:`amorsize.run.budget`), checked before each item and told of failures.
    ``concurrency``: None for a plain function; for an ``async def`` one, the items
    each worker's event loop keeps in flight (:mod:`amorsize.backends.aio`), and
    ``timeout`` is then enforced there, by cancelling the item's task.
    """

    func: Callable[[Any], Any]
    retry: Any
    include_traceback: bool
    function_name: str
    keep_error: bool = False
    source_file: Optional[str] = None
    rate_limit: Any = None
    budget: Any = None
    timeout: Optional[float] = None
    concurrency: Optional[int] = None

    def restore_source(self) -> None:
        """In a worker: give the function's code its file back (see ``source_file``)."""
        if self.source_file:
            from amorsize.tracebacks import restore_source_file

            restore_source_file(self.func, self.source_file)


@dataclass(frozen=True)
class ChunkResult:
    """A finished chunk: one value per item (a Failure where it failed) and the failures.

    ``error`` is the exception of ``failures[0]`` when the spec asked for it and it
    could be shipped; None otherwise.
    """

    chunk_id: int
    start: int
    values: List[Any]
    failures: List[DLQEntry]
    compute_seconds: float
    #: Some values were pre-pickled with cloudpickle (``PickledValue``) to cross over.
    packed_values: bool = False
    error: Optional[BaseException] = None
    #: CPU seconds the chunk's event loop used (async functions only; None otherwise):
    #: with ``compute_seconds`` it tells waiting from computing (amorsize.sizing.aio).
    cpu_seconds: Optional[float] = None


# --- events a pool reports ----------------------------------------------------------


@dataclass(frozen=True)
class ChunkDone:
    """A worker finished ``task``."""

    task: ChunkTask
    result: ChunkResult


@dataclass(frozen=True)
class ChunkLost:
    """``task`` did not finish: its worker died (``worker_crash``) or overran (``timeout``).

    ``position`` is the index within the task of the item that was running, or None
    when the backend cannot tell (the dispatcher then bisects). ``detail`` goes into
    the DLQ entry's metadata (pid, exitcode, cause, timeout_seconds, ...).
    ``finished``: the result of the items before ``position``, when the backend
    still has it (the threads backend: an abandoned thread's values are in this
    process); they are kept, not run again. None otherwise (a dead process's
    values died with it): they run again.
    """

    task: ChunkTask
    position: Optional[int]
    reason: str
    detail: Dict[str, Any] = field(default_factory=dict)
    finished: Optional[ChunkResult] = None


# --- protocols ------------------------------------------------------------------------


class Pool(Protocol):
    """A running backend: at most ``idle_count()`` more chunks may be submitted now."""

    @property
    def size(self) -> int:
        """Chunks it runs at once (its width)."""
        ...

    def idle_count(self) -> int: ...

    def busy_count(self) -> int: ...

    def submit(self, task: ChunkTask) -> None: ...

    def wait(self, timeout: Optional[float]) -> List[Any]:
        """Block until chunks finish or are lost (or ``timeout`` passes); their events."""
        ...

    def close(self, *, kill: bool = False) -> None: ...


class Backend(Protocol):
    """A factory of pools.

    ``chooses_width``: True when the backend sizes itself (a cluster), so with
    ``n_jobs=None`` the run neither measures nor picks a width and passes None.
    """

    name: str
    chooses_width: bool

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> Pool: ...


# --- registry ---------------------------------------------------------------------------

_BUILTIN: Dict[str, str] = {
    "processes": "amorsize.backends.local:ProcessBackend",
    "local": "amorsize.backends.local:ProcessBackend",  # the name before 0.2
    "in_process": "amorsize.backends.inprocess:InProcessBackend",
    "threads": "amorsize.backends.threads:ThreadBackend",
}
_registered: Dict[str, Callable[[], Any]] = {}


def register_backend(name: str, factory: Callable[[], Any]) -> None:
    """Make ``backend=name`` build its backend with ``factory()`` (in this process).

    Registration here wins over an entry point of the same name; built-in names
    cannot be replaced.
    """
    if not isinstance(name, str) or not name or name in _BUILTIN:
        raise invalid_value("name", name, f"a new non-empty str (built in: {', '.join(sorted(_BUILTIN))})")
    _registered[name] = check_callable("factory", factory, "a callable returning a backend")


def available_backends() -> List[str]:
    """Names usable as ``execute(..., backend=NAME)``."""
    return sorted({*_BUILTIN, *_registered, *(ep.name for ep in _entry_points())})


def _entry_points() -> List[Any]:
    found = metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=ENTRY_POINT_GROUP))
    return list(found.get(ENTRY_POINT_GROUP, []))  # Python 3.9


#: Built-in backend classes by name, imported on first use.
_builtin_classes: Dict[str, Any] = {}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


#: Backends published as plugins on PyPI: name -> distribution to install.
KNOWN_PLUGINS: Dict[str, str] = {"dask": "amorsize-dask"}


def _not_found_message(backend: str) -> str:
    """Why ``backend`` is unknown: the plugin to install, or the backends installed here."""
    names = available_backends()
    installed = f"installed backends: {', '.join(names)}"
    if backend in KNOWN_PLUGINS:
        return (
            f"backend={backend!r} needs its plugin, which is not installed: "
            f"pip install {KNOWN_PLUGINS[backend]} ({installed})"
        )
    near = difflib.get_close_matches(backend, names, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return (
        f"backend={backend!r} is not registered; {installed}.{hint} A plugin adds a backend "
        f"through the entry-point group {ENTRY_POINT_GROUP!r}"
    )


def resolve_backend(backend: Any) -> Any:
    """Turn ``backend`` (None, a registered name, or a backend object) into a backend object.

    Raises:
        BackendNotFoundError: no backend is registered under that name.
    """
    if backend is None:
        backend = DEFAULT_BACKEND
    if isinstance(backend, str):
        if backend in _BUILTIN:
            cls = _builtin_classes.get(backend)
            if cls is None:
                cls = _builtin_classes[backend] = _load(_BUILTIN[backend])
            return cls()
        if backend in _registered:
            return _registered[backend]()
        for ep in _entry_points():
            if ep.name == backend:
                return ep.load()()
        raise BackendNotFoundError(_not_found_message(backend))
    if callable(getattr(backend, "open", None)):
        return backend
    raise BackendNotFoundError(
        f"backend={backend!r} is not valid; expected None, a registered name "
        f"({', '.join(available_backends())}) or an object with an open() method"
    )


# --- helpers for backend authors, loaded on first use ---------------------------------------

_LAZY = {
    "run_chunk": "amorsize.backends.worker",
    "encode_result": "amorsize.backends.worker",
    "finish_in_parent": "amorsize.backends.worker",
    "ProcessBackend": "amorsize.backends.local",
    "LocalBackend": "amorsize.backends.local",
    "LocalProcessPool": "amorsize.backends.local",
    "describe_exit": "amorsize.backends.local",
    "InProcessBackend": "amorsize.backends.inprocess",
    "InProcessPool": "amorsize.backends.inprocess",
    "ThreadBackend": "amorsize.backends.threads",
    "ThreadPool": "amorsize.backends.threads",
    "run_async_chunk": "amorsize.backends.aio",
    "Partial": "amorsize.backends.loops",
    "failure_entry": "amorsize.failure",
    "failure_of": "amorsize.failure",
    "usable_cores": "amorsize.sizing.measure",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from amorsize.backends.aio import run_async_chunk
    from amorsize.backends.inprocess import InProcessBackend, InProcessPool
    from amorsize.backends.local import LocalBackend, LocalProcessPool, ProcessBackend, describe_exit
    from amorsize.backends.loops import Partial
    from amorsize.backends.threads import ThreadBackend, ThreadPool
    from amorsize.backends.worker import encode_result, finish_in_parent, run_chunk
    from amorsize.failure import failure_entry, failure_of
    from amorsize.sizing.measure import usable_cores

__all__ = [
    "DEFAULT_BACKEND",
    "ENTRY_POINT_GROUP",
    "Backend",
    "ChunkDone",
    "ChunkLost",
    "ChunkResult",
    "ChunkSpec",
    "ChunkTask",
    "InProcessBackend",
    "InProcessPool",
    "LocalBackend",
    "LocalProcessPool",
    "Partial",
    "Pool",
    "ProcessBackend",
    "ThreadBackend",
    "ThreadPool",
    "available_backends",
    "describe_exit",
    "encode_result",
    "failure_entry",
    "failure_of",
    "finish_in_parent",
    "register_backend",
    "resolve_backend",
    "run_async_chunk",
    "run_chunk",
    "usable_cores",
]
