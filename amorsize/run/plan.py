"""The plan of a run: which backend, how wide, and how big the first chunks are.

With ``n_jobs`` and ``chunksize`` both None (no timeout, no checkpoint, and
``dry_run`` left on), the optimizer's *dry run* times the first few items in
this process and chooses them; the sampled items' results are kept, so no item
runs twice, and sampled items that raised run again in workers, under the retry
policy. A backend that sizes itself (``chooses_width``) is given ``n_jobs=None``.

A plan of width 1 without a timeout on a backend with ``serial_in_process``
(the process pool) runs on the in-process backend: starting a worker costs more
than such a run gains from one.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Tuple

from amorsize.backends.inprocess import InProcessBackend
from amorsize.errors import OptimizerWarning
from amorsize.run.chunker import Chunker
from amorsize.run.options import RunOptions
from amorsize.sizing.measure import usable_cores
from amorsize.sizing.optimizer import OptimizationResult, optimize
from amorsize.sizing.sample import SampleFailure


@dataclass
class Plan:
    """What :func:`plan_run` chose; ``n_jobs`` None lets the backend choose."""

    backend: Any
    n_jobs: Optional[int]
    chunksize: int
    optimization: Optional[OptimizationResult] = None
    #: ``(start, values)`` of sampled items that the dry run finished.
    finished: List[Tuple[int, List[Any]]] = field(default_factory=list)


def plan_run(
    func: Callable[[Any], Any], items: Optional[Iterable[Any]], chunker: Chunker, options: RunOptions
) -> Plan:
    """Choose the backend, width and first chunk size; may run the dry run (see module doc)."""
    backend, n_jobs, chunksize = options.backend, options.n_jobs, options.chunksize
    if n_jobs is None and getattr(backend, "chooses_width", True):
        return Plan(backend, None, chunksize or 1)
    if n_jobs is None and chunksize is None and options.timeout is None and _may_dry_run(options):
        plan = _dry_run(func, items, chunker, options)
    else:
        if n_jobs is None:
            n_jobs = usable_cores()
            if chunker.total is not None:
                n_jobs = max(1, min(n_jobs, chunker.total))
        plan = Plan(backend, n_jobs, chunksize or 1)
    if plan.n_jobs == 1 and options.timeout is None and getattr(backend, "serial_in_process", False):
        plan.backend = InProcessBackend()
    return plan


def _may_dry_run(options: RunOptions) -> bool:
    return options.dry_run and options.checkpoint is None


def _dry_run(
    func: Callable[[Any], Any], items: Optional[Iterable[Any]], chunker: Chunker, options: RunOptions
) -> Plan:
    # The sample runs in this process, where no timeout can be enforced: hence skipped
    # when one is set.
    with warnings.catch_warnings():
        # A sampled item that raises is routine here: it runs again under the retry
        # policy and, if it still fails, lands in the DLQ like any other.
        warnings.simplefilter("ignore", OptimizerWarning)
        sample_from = items if items is not None else chunker.source
        result = optimize(func, sample_from, target_chunk_duration=options.target_chunk_duration,
                          start_method=options.start_method)
    chunker.source = iter(result.data)
    sampled = list(itertools.islice(chunker.source, len(result.sample_results)))
    plan = Plan(options.backend, result.n_jobs, result.chunksize, result)
    for index, (item, value) in enumerate(zip(sampled, result.sample_results)):
        if isinstance(value, SampleFailure):
            chunker.pending.append(chunker.task(index, [item]))
        else:
            plan.finished.append((index, [value]))
    chunker.next_start = len(sampled)
    return plan
