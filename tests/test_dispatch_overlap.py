"""The process pool overlaps the parent's work with the workers': what each overlap keeps.

The parent sends a worker its next chunk before it unpickles the answer, lets idle
workers leave while the last chunks run, and returns once its workers have flushed
their output (a thread reaps them). None of that may cost a result, an output line
or a process left behind.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, List

import psutil
import pytest

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure
from amorsize.backends import LocalProcessPool, process_handle
from amorsize.run import chunker as chunker_module
from amorsize.run.plan import PROBE_ITEMS

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaked_children")]


def double(x: int) -> int:
    return 2 * x


def crash_late(x: int) -> int:
    """Item 2 dies after the worker of items 0 and 1 has left; item 3 must still run."""
    if x == 2:
        time.sleep(0.5)
        os._exit(1)
    return 2 * x


def first_worker_alive_when_slow(x: int, pid_file: str) -> bool:
    """Item 0 notes its worker's pid; item 1 waits, then tells whether that worker lives."""
    if x == 0:
        Path(pid_file).write_text(str(os.getpid()))
        return True
    time.sleep(1.0)
    try:
        return psutil.Process(int(Path(pid_file).read_text())).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_gets_its_next_chunk_before_the_parent_reads_its_answer(
    monkeypatch: Any, start_method: str
) -> None:
    pools: List[LocalProcessPool] = []
    all_busy_at_read: List[bool] = []
    original_wait, original_result = LocalProcessPool.wait, process_handle.Answer.result

    def wait(self: LocalProcessPool, timeout: Any) -> Any:
        pools[:] = [self]
        return original_wait(self, timeout)

    def result(self: process_handle.Answer) -> Any:
        if self._result is None:  # first read: is every worker, the sender too, busy again?
            all_busy_at_read.append(pools[0].busy_count() == pools[0].size)
        return original_result.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(LocalProcessPool, "wait", wait)
    monkeypatch.setattr(process_handle.Answer, "result", property(result))
    n = 2_000
    assert execute(double, range(n), n_jobs=2, chunksize=100, start_method=start_method) == [
        2 * x for x in range(n)]
    assert len(all_busy_at_read) == n // 100
    # Before this, the sender was idle until its answer was read: never all busy.
    assert sum(all_busy_at_read) >= n // 200, all_busy_at_read


def test_the_probe_chooses_the_first_chunks_and_the_sizer_learns_from_real_ones(monkeypatch: Any) -> None:
    observed: List[int] = []
    original = chunker_module.Chunker.observe

    def spy(self: Any, n_items: int, seconds: float) -> None:
        observed.append(n_items)
        original(self, n_items, seconds)

    monkeypatch.setattr(chunker_module.Chunker, "observe", spy)
    n = 20_000
    assert execute(double, list(range(n))) == [2 * x for x in range(n)]
    assert observed and sum(observed) == n - PROBE_ITEMS, observed  # every chunk but the probe


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_an_idle_worker_leaves_while_the_last_chunk_runs(tmp_path: Path, start_method: str) -> None:
    # Item 0 ends at once; with nothing left to send, its worker leaves while item 1
    # sleeps (before this, it stayed until the run ended).
    func = functools.partial(first_worker_alive_when_slow, pid_file=str(tmp_path / "pid"))
    assert execute(func, [0, 1], n_jobs=2, chunksize=1, start_method=start_method) == [True, False]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_chunk_lost_after_the_idle_workers_left_still_runs(tmp_path: Path, start_method: str) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path / "dlq")))
    results = execute(crash_late, [0, 1, 2, 3], n_jobs=2, chunksize=2, dlq=dlq,
                      start_method=start_method)
    assert results[:2] == [0, 2] and results[3] == 6
    assert is_failure(results[2]) and results[2].reason == "worker_crash"
    assert [e.item for e in dlq.get_entries()] == [2]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_output_printed_by_func_is_flushed_before_execute_returns(
    tmp_path: Path, start_method: str
) -> None:
    script = tmp_path / "printing.py"
    script.write_text(textwrap.dedent(f"""
        from amorsize import execute

        def shout(x):
            print(f"item {{x}}")  # block-buffered: stdout is a file
            return x

        if __name__ == "__main__":
            execute(shout, range(40), n_jobs=2, chunksize=5, start_method={start_method!r})
            print("after execute")
    """))
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        subprocess.run([sys.executable, str(script)], stdout=handle, check=True, timeout=60,
                       env={**os.environ, "PYTHONUNBUFFERED": ""})
    lines = out.read_text().splitlines()
    assert sorted(lines[:-1]) == sorted(f"item {x}" for x in range(40))
    assert lines[-1] == "after execute"


def slow_first(x: int) -> int:
    if x == 0:
        time.sleep(0.3)
    return 2 * x


def test_the_decision_reads_the_machine_while_the_probe_runs(monkeypatch: Any) -> None:
    from amorsize.run import dispatch

    probe_running: List[bool] = []
    original = dispatch.read_machine

    def spy(options: Any) -> Any:
        pool = pools[0]
        probe_running.append(pool.busy_count() == 1)
        return original(options)

    pools: List[LocalProcessPool] = []
    monkeypatch.setattr(dispatch, "read_machine", spy)
    monkeypatch.setattr(LocalProcessPool, "submit", _remembering_submit(pools))
    assert execute(slow_first, list(range(50))) == [2 * x for x in range(50)]
    assert probe_running == [True]  # read once, off the decision's path


def _remembering_submit(pools: List[LocalProcessPool]) -> Any:
    original = LocalProcessPool.submit

    def submit(self: LocalProcessPool, task: Any) -> None:
        pools[:] = [self]
        original(self, task)

    return submit


def test_a_pool_closed_when_no_thread_can_start_reaps_its_workers_itself(monkeypatch: Any) -> None:
    import threading

    from amorsize.backends import ChunkSpec

    pool = LocalProcessPool(ChunkSpec(double, None, True, "double"), n_jobs=2, start_method="fork",
                            timeout=None)
    processes = [w.process for w in pool._workers]

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    pool.close()  # at interpreter shutdown: no reaper thread, so it waits for them itself
    assert [p.exitcode for p in processes] == [0, 0]
