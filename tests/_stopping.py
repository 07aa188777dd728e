"""Waiting for a SIGSTOP to take effect (shared by the tests that stop a manager)."""

from __future__ import annotations

import os
import time


def wait_until_stopped(pid: int, bound: float = 10.0) -> None:
    """SIGSTOP is asynchronous: the process's threads may still run for a moment (and,
    say, acknowledge a frame sent right then). Wait until the kernel reports every
    thread of ``pid`` stopped."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):  # every thread, not only the main one
            with open(f"/proc/{pid}/task/{task}/status") as handle:
                states.append(next(line for line in handle if line.startswith("State:")).split()[1])
        if all(state == "T" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within {bound} s")
