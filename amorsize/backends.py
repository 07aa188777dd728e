"""Execution backends: where chunks run.

The dispatcher in :mod:`amorsize.executor` drives a *pool* through five calls;
a backend is a factory of pools. The local process pool is built in; engines
such as Dask live in ``plugins/`` as separate distributions and register a
backend class under the entry-point group ``amorsize.backends``, so the core
never imports them.

A pool runs chunks with :func:`amorsize._chunk.run_chunk` and reports each as
:class:`~amorsize._workers.ChunkDone` or :class:`~amorsize._workers.ChunkLost`
(worker died or timed out; ``position`` None when it cannot tell which item).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, List, Optional, Protocol

from amorsize._chunk import ChunkSpec, ChunkTask
from amorsize._workers import LocalProcessPool
from amorsize.errors import BackendNotFoundError

ENTRY_POINT_GROUP = "amorsize.backends"


class Pool(Protocol):
    """What the dispatcher needs from a running backend."""

    def idle_count(self) -> int: ...

    def busy_count(self) -> int: ...

    def submit(self, task: ChunkTask) -> None: ...

    def wait(self, timeout: Optional[float]) -> List[Any]: ...

    def close(self, *, kill: bool = False) -> None: ...


class Backend(Protocol):
    """A factory of pools; ``n_jobs`` None lets the backend choose its width."""

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> Pool: ...


class LocalBackend:
    """Worker processes on this machine (the default)."""

    name = "local"

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> LocalProcessPool:
        return LocalProcessPool(spec, n_jobs=n_jobs or 1, start_method=start_method, timeout=timeout)


def available_backends() -> List[str]:
    """Names usable as ``execute(..., backend=NAME)``."""
    return ["local", *sorted({ep.name for ep in _entry_points()})]


def _entry_points() -> List[Any]:
    found = metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=ENTRY_POINT_GROUP))
    return list(found.get(ENTRY_POINT_GROUP, []))  # Python 3.9


def resolve_backend(backend: Any) -> Any:
    """Turn ``backend`` (None, a registered name, or a backend object) into a backend object.

    Raises:
        BackendNotFoundError: no backend is registered under that name.
    """
    if backend is None or backend == "local":
        return LocalBackend()
    if isinstance(backend, str):
        for ep in _entry_points():
            if ep.name == backend:
                return ep.load()()
        raise BackendNotFoundError(
            f"backend={backend!r} is not registered; available: {', '.join(available_backends())}. "
            f"Install its plugin (for example: pip install -e plugins/{backend})"
        )
    if callable(getattr(backend, "open", None)):
        return backend
    raise BackendNotFoundError(
        f"backend={backend!r} is not valid; expected None, a registered name "
        f"({', '.join(available_backends())}) or an object with an open() method"
    )
