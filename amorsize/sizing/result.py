"""OptimizationResult: what :func:`amorsize.optimize` recommends, and how to read it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from amorsize.sizing.measure import StartupCosts
from amorsize.sizing.sample import SampleFailure

__all__ = ["OptimizationResult", "format_bytes", "format_seconds"]


@dataclass(frozen=True)
class OptimizationResult:
    """What :func:`optimize` recommends, and what it measured on the way."""

    n_jobs: int
    chunksize: int
    estimated_speedup: float  #: 1.0 when serial; nan when nothing could be timed
    reason: str
    warnings: tuple[str, ...]
    per_item_seconds: float
    item_pickle_bytes: int
    result_pickle_bytes: int
    serial: bool
    #: Iterate this instead of the input: for an iterator, the sampled items are
    #: chained back in front of the rest; otherwise it is the input itself.
    data: Iterable[Any] = field(repr=False, compare=False)
    total_items: int | None = None
    peak_memory_per_item: int | None = None
    per_item_cv: float = 0.0
    #: One per sampled item, in order; a SampleFailure where func raised. Lets a
    #: caller skip recomputing the first len(sample_results) items.
    sample_results: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    sample_failures: tuple[SampleFailure, ...] = ()
    costs: StartupCosts | None = None
    physical_cores: int = 1
    available_memory: int | None = None
    estimated_serial_seconds: float = math.nan
    estimated_parallel_seconds: float = math.nan

    def explain(self) -> str:
        """Return a readable, multi-line account of the decision."""
        plan = "serially" if self.serial else "in parallel"
        speedup = ("unknown" if math.isnan(self.estimated_speedup)
                   else f"{self.estimated_speedup:.2f}x")
        memory = ("not measured" if self.peak_memory_per_item is None
                  else format_bytes(self.peak_memory_per_item))
        lines = [
            f"Run {plan}: n_jobs={self.n_jobs}, chunksize={self.chunksize}",
            f"  why: {self.reason}",
            f"  estimated speedup: {speedup}",
            f"  items: {'unknown' if self.total_items is None else self.total_items}; sampled "
            f"{len(self.sample_results)} ({len(self.sample_failures)} raised)",
            f"  per item: {format_seconds(self.per_item_seconds)} (cv {self.per_item_cv:.2f}), "
            f"peak memory {memory}, pickled {format_bytes(self.item_pickle_bytes)} in / "
            f"{format_bytes(self.result_pickle_bytes)} out",
        ]
        if self.costs is not None:
            c = self.costs
            lines.append(f"  costs ({c.start_method}): process start "
                         f"{format_seconds(c.process_start_seconds)}, IPC round trip "
                         f"{format_seconds(c.ipc_round_trip_seconds)}, "
                         f"{c.seconds_per_byte * 1e9:.2f} ns/byte")
        available = "unknown" if self.available_memory is None else format_bytes(
            self.available_memory)
        lines.append(f"  machine: {self.physical_cores} usable core(s), {available} available")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    """Seconds in a readable unit."""
    if math.isnan(seconds):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_bytes(n: float) -> str:
    """Bytes in a readable binary unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
