"""The plan of a run: which backend, how wide, and how big the first chunks are.

No user code runs in the caller's process unless ``backend="in_process"`` asks
for it. With ``n_jobs`` and ``chunksize`` both None (and ``dry_run`` left on),
the run *probes*: it opens its pool with one worker and sends it the first
``PROBE_ITEMS`` items as the first chunk. That chunk's measured in-worker time
feeds the optimizer's cost model (:func:`amorsize.sizing.optimizer.decide`),
which chooses the width and chunk size; a "serial" decision keeps running in
that one worker, a parallel one grows the pool. The probe's results are kept
like any chunk's, so no item runs twice, and a crash during it costs one item.

A backend that sizes itself (``chooses_width``) is given ``n_jobs=None``. A
backend whose pools cannot grow (no ``can_grow``) is opened at the usable core
count instead of probing.
A call made inside a worker of a run (nested) runs serially there, in-process.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import psutil

from amorsize.backends import ChunkResult
from amorsize.backends.inprocess import InProcessBackend
from amorsize.failure import Failure
from amorsize.run.chunker import Chunker
from amorsize.run.options import RunOptions
from amorsize.sizing.cache import get_startup_costs
from amorsize.sizing.measure import StartupCosts, usable_cores
from amorsize.sizing.optimizer import decide
from amorsize.sizing.sample import SampleStats

#: Items in the probe chunk (the old in-caller dry run's sample size).
PROBE_ITEMS = 5
#: Inputs of at least this many items (a known length) start the workers a
#: parallel decision would add while the probe runs (:class:`Prestart`):
#: below it, the optimizer usually keeps one worker and they would start for nothing.
PRESTART_MIN_ITEMS = 1_000
#: How long the probe may take to answer before the workers are prestarted, per start
#: method: a fork costs the parent its own time, so a probe that answers within it lets
#: the decision fork only the workers it wants, after the first real chunk is sent.
PRESTART_AFTER_SECONDS = {"fork": 0.005}


@dataclass
class Plan:
    """What :func:`plan_run` chose; ``n_jobs`` None lets the backend choose.

    ``probe``: open one worker, run the first chunk, then :func:`widen` decides.
    """

    backend: Any
    n_jobs: Optional[int]
    chunksize: int
    probe: bool = False
    #: One chunk holds the whole input (see :func:`in_one_chunk`).
    whole: bool = False


def in_worker() -> bool:
    """True inside a worker process of a run (or any daemonic process, which cannot fork one)."""
    from amorsize.backends import worker

    return worker.IN_WORKER or multiprocessing.current_process().daemon


def plan_run(chunker: Chunker, options: RunOptions) -> Plan:
    """Choose the backend, width and first chunk size (see module doc); runs no user code."""
    backend, n_jobs, chunksize = options.backend, options.n_jobs, options.chunksize
    if in_worker() and getattr(backend, "name", None) == "processes":
        return Plan(InProcessBackend(), None, chunksize or 1)  # nested: serial, as joblib does
    if n_jobs is None and getattr(backend, "chooses_width", True):
        return Plan(backend, None, chunksize or 1)
    if n_jobs is None and chunksize is None and options.dry_run and getattr(backend, "can_grow", False):
        return Plan(backend, 1, PROBE_ITEMS, probe=True)
    if n_jobs is None:
        n_jobs = usable_cores()
        if chunker.total is not None:
            n_jobs = max(1, min(n_jobs, chunker.total))
    return Plan(backend, n_jobs, chunksize or 1)


def in_one_chunk(plan: Plan, options: RunOptions, total: Optional[int], gathered: bool) -> Plan:
    """``plan``, or one chunk for the whole input when nothing would see the chunks.

    Chunks let a lazy caller (``imap``), a progress bar, a checkpoint or a circuit
    breaker follow a run as it goes, and let a pool spread the work. ``execute()`` on
    the in-process backend, over an input of known length, with none of those, only
    pays for them: it runs the input as one chunk, as a list comprehension would. A
    failure still reaches the DLQ before the next item starts (the pool splits the
    chunk there), and a failure budget still stops before the next item.
    """
    if not (gathered and total and getattr(plan.backend, "name", None) == "in_process"):
        return plan
    if (options.chunksize is not None or options.progress or options.on_progress is not None
            or options.checkpoint is not None or options.circuit_breaker is not None):
        return plan
    return Plan(plan.backend, plan.n_jobs, total, whole=True)


def _pickled_size(obj: Any) -> Optional[int]:
    try:
        return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return None


def _mean_size(objects: Sequence[Any]) -> int:
    sizes = [s for s in map(_pickled_size, objects) if s is not None]
    return sum(sizes) // len(sizes) if sizes else 0


@dataclass(frozen=True)
class Machine:
    """What the decision reads besides the probe (read while the probe runs)."""

    costs: StartupCosts
    cores: int
    available_memory: int


def start_method(options: RunOptions) -> str:
    """The start method the run's workers use: the one asked for, else the platform's
    default, as the process pool resolves it (forkserver on Linux from Python 3.14)."""
    return str(multiprocessing.get_context(options.start_method).get_start_method())


def read_machine(options: RunOptions) -> Machine:
    """The start-up costs of the run's start method, the usable cores, the free memory."""
    return Machine(get_startup_costs(start_method(options)), usable_cores(),
                   psutil.virtual_memory().available)


def widen(result: ChunkResult, items: List[Any], total: Optional[int], options: RunOptions,
          machine: Optional[Machine] = None) -> Plan:
    """The width and chunk size the cost model chooses from the probe chunk's ``result``."""
    ok = [v for v in result.values if not isinstance(v, Failure)]
    stats = SampleStats(
        per_item_seconds=result.compute_seconds / max(1, len(items)),
        per_item_cv=0.0,
        item_pickle_bytes=_mean_size(items),
        result_pickle_bytes=_mean_size(ok),
        n_sampled=len(items),
        n_failed=len(result.failures),
    )
    machine = machine or read_machine(options)
    decision = decide(machine.costs, stats, total_items=total, physical_cores=machine.cores,
                      available_memory=machine.available_memory,
                      target_chunk_duration=options.target_chunk_duration)
    return Plan(options.backend, decision.n_jobs, decision.chunksize)


class Prestart:
    """When to start, while the probe runs, the workers a parallel decision would add.

    Only for an input known to be long enough that a wider pool is likely
    (``PRESTART_MIN_ITEMS``), once the probe chunk is sent, so the probe runs while
    they start; the decision releases the ones it does not use
    (``LocalProcessPool.prestart``). A forked worker starts in a few milliseconds of
    the parent's own time (fork copies its page tables): a probe that answers
    within ``PRESTART_AFTER_SECONDS`` lets the decision fork them instead, while the
    probe's worker already runs its first real chunk.
    """

    def __init__(self, total: Optional[int]) -> None:
        self.total = total
        self.due = False  #: set by the dispatcher for a probing run; the decision clears it
        self._at: Optional[float] = None

    def now_or_hold(self, pool: Any, width: int, hold: Optional[float]) -> Optional[float]:
        """Prestart now, or return how long the dispatcher may wait for the probe first."""
        now = time.monotonic()
        if self._at is None:
            self._at = now + PRESTART_AFTER_SECONDS.get(getattr(pool, "start_method", ""), 0.0)
        if now < self._at:
            left = self._at - now
            return left if hold is None else min(hold, left)
        self.due = False
        prestart = getattr(pool, "prestart", None)
        if prestart is not None and self.total is not None and self.total >= PRESTART_MIN_ITEMS:
            prestart(max(0, usable_cores() - width))
        return hold
