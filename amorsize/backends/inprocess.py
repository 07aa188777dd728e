"""The ``"in_process"`` backend: chunks run in the caller's process, one at a time.

No process starts and nothing is pickled, so it is the fastest way to run work
too small to be worth a worker; but a crash of the function takes the caller
down with it, and no timeout can be enforced (the caller's thread cannot be
stopped), so a timeout is refused. ``submit`` only records the chunk: it runs
in ``wait``, which is where the dispatcher expects to block.
"""

from __future__ import annotations

from typing import Any, List, Optional

from amorsize._validate import invalid_value
from amorsize.backends import ChunkDone, ChunkSpec, ChunkTask
from amorsize.backends.worker import run_chunk


class InProcessPool:
    """A pool of width 1 that is the calling thread."""

    size = 1

    def __init__(self, spec: ChunkSpec) -> None:
        self._spec = spec
        self._task: Optional[ChunkTask] = None

    def idle_count(self) -> int:
        return 0 if self._task is not None else 1

    def busy_count(self) -> int:
        return 1 if self._task is not None else 0

    def submit(self, task: ChunkTask) -> None:
        self._task = task

    def wait(self, timeout: Optional[float]) -> List[Any]:
        task, self._task = self._task, None
        if task is None:
            return []
        return [ChunkDone(task, run_chunk(self._spec, task))]

    def close(self, *, kill: bool = False) -> None:
        self._task = None


class InProcessBackend:
    """Run chunks in this process (``backend="in_process"``); its width is always 1."""

    name = "in_process"
    chooses_width = True

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> InProcessPool:
        if timeout is not None:
            raise invalid_value("timeout", timeout, "None with backend='in_process' (use 'processes')")
        return InProcessPool(spec)
