"""Sizing an ``async def`` function: is it waiting (one loop is enough) or computing?

The run's probe chunk (see :mod:`amorsize.run.plan`) runs on one worker's event
loop, which reports the CPU time it used beside the chunk's wall time. Waiting
on I/O costs wall time and no CPU, so a low share means one loop keeps every
item in flight and more processes would only add start-up and pickling; a share
above :data:`CPU_DOMINANT_SHARE` means the loop is busy computing, and the run
takes one loop per core instead.
"""

from __future__ import annotations

from amorsize.sizing.measure import usable_cores

#: CPU time over wall time above which the function counts as CPU-bound (waiting on
#: I/O measures well under 0.1; a computing loop near 1, less on a loaded machine).
CPU_DOMINANT_SHARE = 0.3


def cpu_share(cpu_seconds: float | None, wall_seconds: float) -> float:
    """CPU seconds over wall seconds (0 when either is unknown or zero)."""
    if not cpu_seconds or wall_seconds <= 0:
        return 0.0
    return cpu_seconds / wall_seconds


def async_width(share: float) -> int:
    """Loops for a measured CPU share: 1 while waiting dominates, else one per core."""
    return usable_cores() if share > CPU_DOMINANT_SHARE else 1
