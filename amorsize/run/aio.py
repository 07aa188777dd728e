"""Run-level glue for ``async def`` functions: the spec fields and the plan.

The worker side is :mod:`amorsize.backends.aio`. Here: a coroutine function's
chunks carry ``concurrency`` and the item timeout (enforced by cancelling the
item's task, so the backend is opened without one and never kills a worker for
it), and the plan: :func:`plan_async`, then :func:`widen_async` after the probe.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from amorsize._aio import is_async_callable
from amorsize._validate import invalid_value
from amorsize.backends import ChunkResult
from amorsize.backends.aio import DEFAULT_CONCURRENCY, async_chunksize
from amorsize.run.chunker import Chunker
from amorsize.run.options import RunOptions
from amorsize.run.plan import PROBE_ITEMS, Plan, plan_run
from amorsize.sizing.aio import async_width, cpu_share


def async_fields(func: Callable[[Any], Any], options: RunOptions) -> Dict[str, Any]:
    """The ChunkSpec fields of a run: ``concurrency`` for a coroutine function."""
    if not is_async_callable(func):
        if options.concurrency is not None:
            raise invalid_value("concurrency", options.concurrency,
                                "None for a plain function (it applies to async def functions)")
        return {}
    return {"concurrency": _concurrency(options)}


def _concurrency(options: RunOptions) -> int:
    return options.concurrency or DEFAULT_CONCURRENCY


def plan_async(chunker: Chunker, options: RunOptions) -> Plan:
    """Width and chunk size of an async run.

    As :func:`~amorsize.run.plan.plan_run`, except: with ``n_jobs=None`` on a backend
    that can grow, the probe chunk runs on one worker's loop and :func:`widen_async`
    keeps that one loop unless CPU time dominated; without a probe, one loop. Chunks
    hold ``concurrency * ASYNC_CHUNK_ROUNDS`` items unless ``chunksize`` is set.
    """
    plan = plan_run(chunker, options)
    if plan.probe:
        return Plan(plan.backend, 1, min(PROBE_ITEMS, _concurrency(options)), probe=True)
    chunksize = options.chunksize or async_chunksize(_concurrency(options))
    n_jobs = plan.n_jobs
    if options.n_jobs is None and n_jobs is not None:  # not probing: one loop is the default
        n_jobs = 1
    return Plan(plan.backend, n_jobs, chunksize)


def widen_async(result: ChunkResult, total: Optional[int], options: RunOptions) -> Plan:
    """After the probe chunk: one loop while waiting dominates, one per core while computing."""
    n_jobs = async_width(cpu_share(result.cpu_seconds, result.compute_seconds))
    if total is not None:
        n_jobs = max(1, min(n_jobs, total))
    return Plan(options.backend, n_jobs, options.chunksize or async_chunksize(_concurrency(options)))
