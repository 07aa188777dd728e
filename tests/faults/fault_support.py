"""Helpers for the fault suite: find every process a test started, wherever it went.

``no_leaked_children`` (tests/conftest.py) sees only descendants that are still
attached to this process. A worker whose parent died, a copy forked by ``func``
or a grandchild started by ``func`` is re-parented to init and escapes it. Here
each test sets a unique environment tag before it starts anything; every process
started from then on (workers, scripts, their children, forked copies) inherits
it, so ``/proc/PID/environ`` finds them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent
SCRIPTS = FAULTS / "scripts"
TAG_VAR = "AMORSIZE_FAULT_TAG"
#: The issue's promise: 3 s after execute() returns or raises, no process it started is alive.
GONE_WITHIN = 3.0
#: A script run by a test must finish within this (the machine is shared and loaded).
SCRIPT_TIMEOUT = 90.0


def _is_interpreter_helper(proc: psutil.Process) -> bool:
    # The resource tracker and forkserver of *this* interpreter live until pytest
    # exits, by design. A script's helpers are its children and must go with it.
    try:
        cmdline = " ".join(proc.cmdline())
        parent = proc.ppid()
    except psutil.Error:
        return False
    helper = "resource_tracker" in cmdline or "forkserver" in cmdline
    return helper and parent == os.getpid()


def tagged_processes(tag: str) -> List[psutil.Process]:
    """Live (non-zombie) processes other than this one carrying ``tag`` in their environment."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(TAG_VAR) != tag or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:  # gone meanwhile, or another user's process
            continue
        if not _is_interpreter_helper(proc):
            found.append(proc)
    return found


def _describe(procs: Sequence[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"pid {proc.pid} ppid {proc.ppid()}: {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            lines.append(f"pid {proc.pid} (gone while listing)")
    return "\n".join(lines)


@dataclass
class ProcessTag:
    """The tag of one test's processes, with the checks built on it."""

    tag: str

    def env(self, **extra: str) -> Dict[str, str]:
        """The environment for a script: this tag; the worktree and fault_probes importable."""
        parts = (str(ROOT), str(FAULTS), os.environ.get("PYTHONPATH", ""))
        path = os.pathsep.join(p for p in parts if p)
        return dict(os.environ, **{TAG_VAR: self.tag, "PYTHONPATH": path}, **extra)

    def alive(self) -> List[psutil.Process]:
        return tagged_processes(self.tag)

    def assert_gone(self, within: float = GONE_WITHIN, what: str = "processes started") -> None:
        """Fail unless every tagged process is gone within ``within`` seconds from now."""
        deadline = time.monotonic() + within
        alive = self.alive()
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = self.alive()
        assert not alive, f"{what} still alive {within} s later:\n{_describe(alive)}"

    def kill_all(self) -> None:
        """Clean up after a failed check, so one failure does not load the next tests."""
        for proc in self.alive():
            try:
                proc.kill()
            except psutil.Error:
                pass


def script_command(name: str, *args: str) -> List[str]:
    """The command that runs ``tests/faults/scripts/<name>`` as ``__main__``."""
    return [sys.executable, str(SCRIPTS / name), *args]


def run_script(
    tagged: ProcessTag, name: str, *args: str, cwd: Path, timeout: float = SCRIPT_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run a script to completion (killed, and the test failed, if it overruns ``timeout``)."""
    proc = subprocess.Popen(
        script_command(name, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=tagged.env(), cwd=str(cwd), text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{name} ran past {timeout} s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
