"""What processes cost on this machine: start-up, IPC, bytes moved; and the usable cores.

::

    measure_startup_costs(method)
      ├─ start and join a trivial process                → process_start_seconds
      └─ an echo child behind a Pipe: small round trips  → ipc_round_trip_seconds,
         a few large round trips                         → seconds_per_byte

These costs depend on the machine, not on the workload, so :mod:`amorsize.sizing.cache`
measures them once per host and start method and keeps them.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import pickle
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# --- tuning constants (measurement) -------------------------------------------
#: Trivial processes started to time start-up; the fastest is kept, since a busy
#: machine only ever adds noise on top of the true cost.
START_REPEATS = 2
#: Small-payload round trips timed through the echo child (their median is kept).
ROUND_TRIPS = 50
#: What a "small" message looks like: a chunk header and a few small values.
SMALL_PAYLOAD = (0, 1, "item", 2.5)
#: Elements in the large payload used to price bytes; pickles to roughly 200 KB of
#: mixed ints and strings, closer to real items than one flat bytes object.
LARGE_PAYLOAD_ELEMENTS = 20_000
#: Round trips of the large payload (the fastest is kept).
LARGE_REPEATS = 3
#: Seconds any one step of the measurement may take before it is abandoned.
MEASURE_TIMEOUT = 60.0
#: Costs assumed when measuring fails (process start, IPC round trip, per byte):
#: deliberately pessimistic, so a failed measurement never makes parallel look cheap.
FALLBACK_COSTS = {"fork": (0.02, 2e-4, 2e-8), "forkserver": (0.1, 2e-4, 2e-8)}
FALLBACK_COSTS_OTHER = (0.5, 2e-4, 2e-8)  # spawn and anything unknown

# --- start-up and IPC costs ---------------------------------------------------


@dataclass(frozen=True)
class StartupCosts:
    """Fixed costs of running work in processes started with one start method."""

    start_method: str
    process_start_seconds: float  #: start and join one trivial process
    ipc_round_trip_seconds: float  #: one small message to a worker and back
    seconds_per_byte: float  #: pickle, send and unpickle one byte, one way


def _noop() -> None:
    """Target of the start-up timing: do nothing, exit."""


def _echo(conn: Any) -> None:
    """Target of the IPC timing: send every message back until ``None``."""
    while True:
        message = conn.recv()
        if message is None:
            break
        conn.send(message)
    conn.close()


def _timed_round_trip(conn: Any, payload: Any) -> float:
    """Send ``payload`` to the echo child, wait for it to come back; return seconds."""
    start = time.perf_counter()
    conn.send(payload)
    if not conn.poll(MEASURE_TIMEOUT):
        raise TimeoutError("the echo process did not answer")
    conn.recv()
    return time.perf_counter() - start


def _time_process_start(ctx: Any) -> float:
    """Start and join one trivial process; return seconds."""
    proc = ctx.Process(target=_noop, daemon=True)
    start = time.perf_counter()
    proc.start()
    proc.join(MEASURE_TIMEOUT)
    elapsed = time.perf_counter() - start
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError("a trivial process did not exit")
    return elapsed


def measure_startup_costs(start_method: str) -> StartupCosts:
    """Measure the start-up and IPC costs of ``start_method`` on this machine.

    Args:
        start_method: a name from ``multiprocessing.get_all_start_methods()``.

    Returns:
        The measured :class:`StartupCosts`.

    Raises:
        OSError, EOFError, TimeoutError: a process could not be started or did not answer.
    """
    ctx: Any = multiprocessing.get_context(start_method)
    start_seconds = min(_time_process_start(ctx) for _ in range(START_REPEATS))
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,), daemon=True)
    proc.start()
    child.close()
    try:
        _timed_round_trip(parent, SMALL_PAYLOAD)  # waits for the child to boot
        # The median, not the mean: another busy process only ever adds outliers.
        small = statistics.median(_timed_round_trip(parent, SMALL_PAYLOAD)
                                  for _ in range(ROUND_TRIPS))
        large = [(i, str(i)) for i in range(LARGE_PAYLOAD_ELEMENTS)]
        n_bytes = len(pickle.dumps(large, pickle.HIGHEST_PROTOCOL))
        big = min(_timed_round_trip(parent, large) for _ in range(LARGE_REPEATS))
        parent.send(None)
    finally:
        parent.close()
        proc.join(MEASURE_TIMEOUT)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    # A round trip moves the payload both ways; the model prices one way.
    per_byte = max(big - small, 0.0) / (2 * n_bytes)
    return StartupCosts(start_method, start_seconds, small, per_byte)


def fallback_costs(start_method: str) -> StartupCosts:
    """The pessimistic costs assumed for ``start_method`` when measuring fails."""
    return StartupCosts(start_method, *FALLBACK_COSTS.get(start_method, FALLBACK_COSTS_OTHER))


# --- the machine --------------------------------------------------------------


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """The machine's physical cores (read once: psutil globs /sys, ~0.1 ms a call)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def usable_cores() -> int:
    """Physical cores this process may use: affinity and cgroup quota respected."""
    cores = physical_cores()
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)
