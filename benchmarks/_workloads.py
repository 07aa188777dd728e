"""Workload functions for the benchmarks; module level so every pool can import them."""

from __future__ import annotations

import os
import random
import time
from typing import List, Tuple

CRASH_EXIT_CODE = 17


def inc(x: int) -> int:
    """The tiny task: one addition."""
    return x + 1


def spin(iterations: int) -> int:
    """A CPU-bound busy loop; ``iterations`` comes from :func:`calibrate`."""
    acc = 0
    for i in range(iterations):
        acc += i
    return acc


def spin_fail_every_tenth(item: Tuple[int, int]) -> int:
    """``spin``, but items whose index is a multiple of 10 raise after their work."""
    index, iterations = item
    value = spin(iterations)
    if index % 10 == 0:
        raise ValueError(f"item {index} fails by design")
    return value


def spin_indexed(item: Tuple[int, int]) -> int:
    """``spin`` on an ``(index, iterations)`` item, the same shape as the failing variant."""
    return spin(item[1])


def spin_crash_on(item: Tuple[int, int, bool]) -> int:
    """``spin``, then kill the worker process if the item's crash flag is set."""
    _index, iterations, crash = item
    value = spin(iterations)
    if crash:
        os._exit(CRASH_EXIT_CODE)
    return value


def calibrate(target_seconds: float = 0.001, rounds: int = 5) -> int:
    """Iterations of :func:`spin` that take about ``target_seconds`` of CPU on this machine.

    Measured in CPU time (``process_time``), best of ``rounds``, so other processes
    competing for the cores do not make the loop look slower than it is.
    """
    n = 10_000
    while True:
        began = time.process_time()
        spin(n)
        if time.process_time() - began > 0.05:
            break
        n *= 2
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        spin(n)
        best = min(best, time.process_time() - began)
    return max(1, int(n * target_seconds / best))


def lognormal_iterations(count: int, per_ms: int, *, sigma: float = 1.0, seed: int = 42) -> List[int]:
    """Iterations for ``count`` tasks with lognormal durations, mean 1 ms (fixed seed)."""
    rng = random.Random(seed)
    mu = -sigma * sigma / 2  # mean of lognormal(mu, sigma) is exp(mu + sigma^2/2) = 1 (ms)
    return [max(1, int(per_ms * rng.lognormvariate(mu, sigma))) for _ in range(count)]
