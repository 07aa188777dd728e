"""Issue 12, "Why" 9: Ctrl-C is final, and no process outlives its run.

Today a second Ctrl-C while workers that ignore SIGTERM are being stopped leaves
both workers alive, and a grandchild started by ``func`` survives Ctrl-C.
Target: escalate to SIGKILL; whenever a worker is stopped (crash, timeout,
shutdown, Ctrl-C) its whole process group goes; workers ignoring SIGTERM are gone
within 2 s, and 3 s after ``execute()`` returns or raises nothing it started is alive.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fault_probes import grandchild_then, recorded_pids
from fault_support import (
    GONE_WITHIN,
    ProcessTag,
    assert_pids_gone,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
    script_command,
    wait_for_files,
)

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaked_children")]

#: The issue's bound for workers that ignore SIGTERM, after the Ctrl-C that stops the run.
WORKERS_GONE_WITHIN = 2.0
#: Between two Ctrl-C presses: the second lands while the first is shutting workers down.
SECOND_PRESS_AFTER = 0.2
#: The caller must be gone this soon after the last Ctrl-C (as in test_execute_faults).
CALLER_EXITS_WITHIN = 5.0
#: Generous deadlines for a loaded machine: workers to start, the caller to exit at all.
START_TIMEOUT = 60.0
EXIT_TIMEOUT = 15.0


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "double-ctrl-c"])
def test_ctrl_c_leaves_no_worker_or_grandchild_alive(
    tmp_path: Path, start_method: str, presses: int, process_tag: ProcessTag
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:  # a file, not a pipe: a survivor would hold a pipe open
        proc = subprocess.Popen(
            script_command("ctrl_c.py", str(pid_dir), start_method), stdout=subprocess.DEVNULL,
            stderr=stderr, env=process_tag.env(), cwd=str(tmp_path),
        )
    try:
        wait_for_files(pid_dir, "grandchild-", 2, START_TIMEOUT, proc)  # both workers are busy
        for press in range(presses):
            if press:
                time.sleep(SECOND_PRESS_AFTER)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        pressed = time.monotonic()
        try:
            proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the caller was still running {EXIT_TIMEOUT} s after {presses} Ctrl-C")
        exited = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = stderr_path.read_text()
    assert exited < CALLER_EXITS_WITHIN, f"the caller took {exited:.1f} s to exit"
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err, err[-2000:]
    assert_pids_gone(recorded_pids(pid_dir, "worker-"), WORKERS_GONE_WITHIN,
                     "workers that ignore SIGTERM", f"{WORKERS_GONE_WITHIN} s after the caller exited")
    assert_pids_gone(recorded_pids(pid_dir, "grandchild-"), GONE_WITHIN,
                     "processes started by func", f"{GONE_WITHIN} s after the caller exited")


@pytest.mark.parametrize("then", ["hang", "crash", "return"])
def test_processes_started_by_func_go_with_their_worker(
    tmp_path: Path, start_method: str, then: str, process_tag: ProcessTag
) -> None:
    # hang: the worker is killed for its timeout; crash: it dies; return: the run ends
    # and the pool shuts down. Each time, the grandchild goes with the worker's group.
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    func = functools.partial(grandchild_then, at=2, then=then, pid_dir=str(tmp_path))
    results = execute(func, range(6), n_jobs=2, chunksize=1, dlq=dlq, start_method=start_method,
                      timeout=1.0 if then == "hang" else None)
    returned = time.monotonic()
    expected_reason = {"hang": "timeout", "crash": "worker_crash"}.get(then)
    for i, value in enumerate(results):
        if i == 2 and expected_reason:
            assert is_failure(value) and value.reason == expected_reason, value
        else:
            assert value == i * 2, (i, value)
    remaining = max(0.0, GONE_WITHIN - (time.monotonic() - returned))
    assert_pids_gone(recorded_pids(tmp_path, "grandchild-"), remaining,
                     f"a process started by func ({then})", f"{GONE_WITHIN} s after execute() returned")
