"""Helpers for the fault suite: find every process a test started, wherever it went.

``no_leaked_children`` (tests/conftest.py) sees only descendants that are still
attached to this process. A worker whose parent died, a copy forked by ``func``
or a grandchild started by ``func`` is re-parented to init and escapes it.
:class:`ProcessTag` finds them all: by an environment tag every exec'd process
inherits, and by this session's new members (see its docstring).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Sequence, Tuple

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


ProcessKey = Tuple[int, float]  # (pid, create time): a pid alone may be reused


def _key(proc: psutil.Process) -> ProcessKey:
    return proc.pid, proc.create_time()


def session_members(session: int) -> FrozenSet[ProcessKey]:
    """The processes of a session right now."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session:
                found.add(_key(proc))
        except (OSError, psutil.Error):
            continue
    return frozenset(found)


def _started_by_test(proc: psutil.Process, tag: str, session: int,
                     before: FrozenSet[ProcessKey]) -> bool:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if proc.environ().get(TAG_VAR) == tag:
            return True
        new_in_session = os.getsid(proc.pid) == session and _key(proc) not in before
        return new_in_session and _ours_or_orphaned(proc, before)
    except (OSError, psutil.Error):  # gone meanwhile, or another user's process
        return False


def _ours_or_orphaned(proc: psutil.Process, before: FrozenSet[ProcessKey]) -> bool:
    """True for a descendant of this test process, or an orphan whose whole line is new.

    Another command started in the same session while the test runs (a shell job, a
    benchmark) descends from a process that was there before: never ours to judge or kill.
    """
    try:
        for parent in proc.parents():
            if parent.pid == os.getpid():
                return True
            if _key(parent) in before:
                return False
        return True  # re-parented to init (or a subreaper) with no older ancestor
    except (OSError, psutil.Error):  # gone meanwhile, or another user's process
        return False


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
    """How to find one test's processes, with the checks built on it.

    A process is the test's if it carries ``tag`` in the environment it was exec'd
    with, or if it joined this session after the test began. The first finds
    spawned workers, scripts and their children wherever they went; the second
    finds fork-started workers and copies forked from them, which keep the
    environment block pytest was exec'd with (``os.environ`` changes are invisible
    in ``/proc/PID/environ``) and may be re-parented to init.
    """

    tag: str
    session: int = field(default_factory=lambda: os.getsid(0))
    before: FrozenSet[ProcessKey] = frozenset()

    @classmethod
    def start(cls, tag: str) -> ProcessTag:
        session = os.getsid(0)
        return cls(tag, session, session_members(session))

    def env(self, **extra: str) -> Dict[str, str]:
        """The environment for a script: this tag; the worktree and fault_probes importable."""
        parts = (str(ROOT), str(FAULTS), os.environ.get("PYTHONPATH", ""))
        path = os.pathsep.join(p for p in parts if p)
        return dict(os.environ, **{TAG_VAR: self.tag, "PYTHONPATH": path}, **extra)

    def alive(self) -> List[psutil.Process]:
        """Live (non-zombie) processes the test started, but this one's own helpers."""
        return [
            proc for proc in psutil.process_iter()
            if proc.pid != os.getpid()
            and _started_by_test(proc, self.tag, self.session, self.before)
            and not _is_interpreter_helper(proc)
        ]

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


@pytest.fixture(name="process_tag")
def process_tag_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProcessTag]:
    """Tag every process this test starts; at the end none may be left (checked within 3 s).

    Test modules import it (``from fault_support import process_tag_fixture``). It is
    not in a tests/faults/conftest.py: a second module named ``conftest`` would shadow
    the one the Dask plugin's tests import by that name.
    """
    tagged = ProcessTag.start(uuid.uuid4().hex)
    monkeypatch.setenv(TAG_VAR, tagged.tag)
    yield tagged
    try:
        tagged.assert_gone(GONE_WITHIN, "processes started by this test")
    finally:
        tagged.kill_all()


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


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_pids_gone(pids: Sequence[int], within: float, what: str, since: str = "") -> None:
    """Fail unless every process in ``pids`` is gone (or a zombie) within ``within`` s from now.

    ``since`` names the moment ``within`` is counted from, for the message.
    """
    assert pids, f"no {what} were recorded: the probe never ran"
    deadline = time.monotonic() + within
    alive = [p for p in pids if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    assert not alive, f"{what} still alive {since or f'{within:.1f} s later'}: {alive}"


def wait_for_files(directory: Path, prefix: str, count: int, timeout: float, proc: Any = None) -> None:
    """Wait until ``directory`` holds ``count`` files named ``prefix*`` (a probe's pids)."""
    deadline = time.monotonic() + timeout
    while len([p for p in directory.iterdir() if p.name.startswith(prefix)]) < count:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the script ended early (rc {proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} {prefix!r} files in {directory} after {timeout} s")
        time.sleep(0.05)
