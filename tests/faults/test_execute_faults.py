"""execute() under faults: crashes, signals, timeouts, bad pickles, Ctrl-C, a killed parent.

Every test has a timeout and checks that no worker process is left behind. The
core crash and timeout tests run under fork and spawn (``start_method`` fixture).
"""

from __future__ import annotations

import copyreg
import ctypes
import faulthandler
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Dict, List

import psutil
import pytest
from fault_support import assert_pids_gone

from amorsize import (
    CrashLoopError,
    DeadLetterQueue,
    DLQPolicy,
    Failure,
    TaskFailedError,
    execute,
)
from amorsize.backends import ChunkDone, ChunkSpec, ChunkTask, LocalProcessPool

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaked_children")]


def memory_dlq() -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(auto_persist=False))


# -- worker functions (module level: importable under spawn) ---------------------


def exit_on(x: int, bad: frozenset = frozenset()) -> int:
    if x in bad:
        os._exit(13)
    return x * 2


def sigkill_on(x: int, bad: frozenset = frozenset()) -> int:
    if x in bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def segfault_on(x: int, bad: frozenset = frozenset()) -> int:
    if x in bad:
        faulthandler.disable()  # keep pytest's inherited fault handler from dumping stacks
        ctypes.string_at(0)
    return x * 2


def sleep_on(x: int, bad: frozenset = frozenset(), seconds: float = 30.0) -> int:
    if x in bad:
        time.sleep(seconds)
    return x * 2


def double(x: int) -> int:
    return x * 2


def always_exit(x: int) -> int:
    os._exit(7)


class TwoArgError(Exception):
    """Cannot be unpickled: its __init__ needs two arguments, args holds one."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


@pytest.fixture(autouse=True)
def _two_arg_error_stays_unpicklable() -> Any:
    """Importing dask.distributed (its plugin tests share this session) installs tblib's
    pickling for every exception class that exists at that moment, which would make
    TwoArgError picklable; undo it so these tests exercise the unpicklable case."""
    copyreg.dispatch_table.pop(TwoArgError, None)
    yield


def raise_two_arg(x: int) -> int:
    if x == 3:
        raise TwoArgError(42, "two-argument exception")
    return x


def _gen() -> Any:
    yield 1


def unpicklable_result(x: int) -> Any:
    if x == 2:
        return threading.Lock()
    if x == 4:
        return _gen()
    if x == 5:
        return lambda: "cloudpickle carries lambdas"
    return x


def huge_result(x: int) -> Any:
    return b"\x01" * (50 * 2**20) if x == 1 else x


def _expected_with_failures(results: List[Any], n: int, bad: set) -> None:
    assert len(results) == n
    for i, value in enumerate(results):
        if i in bad:
            assert isinstance(value, Failure) and not value
        else:
            assert value == i * 2


def _by_item(dlq: DeadLetterQueue) -> Dict[Any, Any]:
    entries = dlq.get_entries()
    items = [e.item for e in entries]
    assert len(items) == len(set(items)), f"duplicate DLQ entries: {items}"
    return {e.item: e for e in entries}


# -- crashes ---------------------------------------------------------------------


def test_os_exit_dead_letters_only_the_poison_item(start_method: str) -> None:
    bad = {7, 18}
    dlq = memory_dlq()
    func = functools.partial(exit_on, bad=frozenset(bad))
    results = execute(func, range(30), n_jobs=2, chunksize=5, dlq=dlq, start_method=start_method)
    _expected_with_failures(results, 30, bad)
    entries = _by_item(dlq)
    assert set(entries) == bad
    for item, entry in entries.items():
        assert entry.reason == "worker_crash"
        assert entry.error_type.endswith("WorkerCrashedError")
        assert entry.metadata["exitcode"] == 13
        assert entry.metadata["index"] == item
        assert "exit" in entry.error_message
        assert results[item].reason == "worker_crash"


def test_sigkill_is_reported_with_its_signal(start_method: str) -> None:
    dlq = memory_dlq()
    func = functools.partial(sigkill_on, bad=frozenset({4}))
    results = execute(func, range(12), n_jobs=2, chunksize=4, dlq=dlq, start_method=start_method)
    _expected_with_failures(results, 12, {4})
    (entry,) = dlq.get_entries()
    assert entry.reason == "worker_crash"
    assert entry.metadata["exitcode"] == -signal.SIGKILL
    assert entry.metadata["signal"] == "SIGKILL"
    assert "out-of-memory" in entry.error_message  # names the likely cause


def test_segfault_through_ctypes(start_method: str) -> None:
    dlq = memory_dlq()
    func = functools.partial(segfault_on, bad=frozenset({0, 9}))
    results = execute(func, range(10), n_jobs=2, chunksize=3, dlq=dlq, start_method=start_method)
    _expected_with_failures(results, 10, {0, 9})
    for entry in dlq.get_entries():
        assert entry.metadata["signal"] == "SIGSEGV"
        assert "segmentation fault" in entry.error_message


def test_pool_is_refilled_after_every_crash() -> None:
    # More crashes than workers: the run only finishes if dead workers are replaced.
    bad = {1, 3, 5, 8, 13}
    dlq = memory_dlq()
    func = functools.partial(exit_on, bad=frozenset(bad))
    results = execute(func, range(40), n_jobs=2, chunksize=2, dlq=dlq, start_method="fork")
    _expected_with_failures(results, 40, bad)
    assert {e.item for e in dlq.get_entries()} == bad


def test_crash_loop_raises_after_flushing_the_dlq(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    with pytest.raises(CrashLoopError) as info:
        execute(always_exit, range(50), n_jobs=2, chunksize=1, dlq=dlq, max_crashes=2,
                start_method="fork")
    assert isinstance(info.value, BrokenProcessPool)
    assert "max_crashes=2" in str(info.value)
    assert len(dlq) == 3
    reopened = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))  # what reached the disk
    assert sorted(e.item for e in reopened.get_entries()) == sorted(e.item for e in dlq.get_entries())
    assert {e.reason for e in reopened.get_entries()} == {"worker_crash"}


def test_max_crashes_zero_stops_at_the_first_crash() -> None:
    with pytest.raises(CrashLoopError):
        execute(functools.partial(exit_on, bad=frozenset({2})), range(10), n_jobs=2,
                dlq=memory_dlq(), max_crashes=0, start_method="fork")


# -- timeouts ----------------------------------------------------------------------


def test_timeout_kills_only_the_slow_item(start_method: str) -> None:
    dlq = memory_dlq()
    func = functools.partial(sleep_on, bad=frozenset({5}))
    began = time.monotonic()
    results = execute(func, range(16), n_jobs=2, chunksize=4, timeout=1.0, dlq=dlq,
                      start_method=start_method)
    elapsed = time.monotonic() - began
    _expected_with_failures(results, 16, {5})
    (entry,) = dlq.get_entries()
    assert entry.reason == "timeout"
    assert entry.metadata["timeout_seconds"] == 1.0
    assert "timeout=1.0" in entry.error_message
    assert elapsed < 15, f"the 30 s item was not cut short ({elapsed:.1f} s)"


def _load_slowly() -> Any:
    time.sleep(SLOW_LOAD_SECONDS)
    return SlowToLoad()


class SlowToLoad:
    """A function whose loading in a worker (unpickling) takes longer than the timeout."""

    def __call__(self, x: int) -> int:
        return x * 2

    def __reduce__(self) -> Any:
        return (_load_slowly, ())


#: Longer than the timeout below: a clock started before the worker is ready would fire.
SLOW_LOAD_SECONDS = 3.0


def test_worker_start_up_does_not_count_against_the_timeout(start_method: str) -> None:
    # Regression: the item clock used to start when the chunk was sent, so a spawn
    # worker's start-up (imports, ~0.3-1 s) timed out its first item, and the run
    # ended in CrashLoopError on a function that never ran past 1 ms. A start-up made
    # slower than the timeout on purpose shows it without racing the machine's load.
    dlq = memory_dlq()
    results = execute(SlowToLoad(), range(12), n_jobs=2, chunksize=2, timeout=2.0, dlq=dlq,
                      start_method=start_method)
    assert results == [i * 2 for i in range(12)]
    assert len(dlq) == 0


def test_timeouts_are_not_counted_as_crashes() -> None:
    # Items that legitimately overrun the timeout must not trip the crash-loop guard.
    bad = frozenset({0, 1, 2})
    dlq = memory_dlq()
    results = execute(functools.partial(sleep_on, bad=bad, seconds=60), range(6), n_jobs=2,
                      chunksize=1, timeout=2.0, dlq=dlq, max_crashes=1, start_method="fork")
    _expected_with_failures(results, 6, set(bad))
    assert {e.reason for e in dlq.get_entries()} == {"timeout"}


# -- what cannot be pickled ---------------------------------------------------------


def test_unpicklable_exception_is_recorded_as_text(start_method: str) -> None:
    dlq = memory_dlq()
    results = execute(raise_two_arg, range(6), n_jobs=2, dlq=dlq, start_method=start_method)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]
    (entry,) = dlq.get_entries()
    assert entry.reason == "exception"
    assert entry.error_type.endswith("TwoArgError")
    assert entry.error_message == "code 42: two-argument exception"
    assert "raise TwoArgError" in (entry.traceback or "")


def test_unpicklable_exception_in_raise_mode() -> None:
    with pytest.raises(TaskFailedError) as info:
        execute(raise_two_arg, range(6), n_jobs=2, start_method="fork")
    assert info.value.error_type.endswith("TwoArgError")
    assert "code 42" in str(info.value)


def test_unpicklable_result_is_dead_lettered(start_method: str) -> None:
    dlq = memory_dlq()
    results = execute(unpicklable_result, range(7), n_jobs=2, chunksize=7, dlq=dlq,
                      start_method=start_method)
    assert results[:2] == [0, 1] and results[3] == 3 and results[6] == 6
    assert results[5]() == "cloudpickle carries lambdas"
    entries = _by_item(dlq)
    assert set(entries) == {2, 4}
    for item in (2, 4):
        assert entries[item].reason == "unpicklable_result"
        assert results[item].reason == "unpicklable_result"
        assert "result_repr" in entries[item].metadata


def test_huge_result_crosses_the_pipe() -> None:
    began = time.monotonic()
    results = execute(huge_result, range(4), n_jobs=2, chunksize=1, start_method="fork")
    assert results[0] == 0 and results[2:] == [2, 3]
    assert len(results[1]) == 50 * 2**20 and results[1][:3] == b"\x01\x01\x01"
    assert time.monotonic() - began < 30


# -- Ctrl-C and a killed parent (subprocess scripts) ----------------------------------

_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from amorsize import execute, DeadLetterQueue, DLQPolicy

    PIDS = sys.argv[1]

    def slow(x):
        path = os.path.join(PIDS, str(os.getpid()))
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if x == 0:
            raise ValueError("recorded before the interrupt")
        time.sleep(0.2)
        return x

    if __name__ == "__main__":
        dlq = DeadLetterQueue(DLQPolicy(directory=sys.argv[2]))
        execute(slow, range(10_000), n_jobs=2, chunksize=1, dlq=dlq, start_method=sys.argv[3])
    """
)


def _start_script(tmp_path: Path, start_method: str) -> tuple[subprocess.Popen, Path]:
    """Start the long run; return once both workers run items and item 0 is in the DLQ."""
    script = tmp_path / "long_run.py"
    script.write_text(_SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pids), str(tmp_path / "dlq"), start_method],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path),
    )
    journal = tmp_path / "dlq" / "dlq.jsonl"
    try:
        deadline = time.monotonic() + 30
        # Both workers are running items, and item 0's failure has reached the journal.
        while len(list(pids.iterdir())) < 2 or not _journal_lines(journal):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.02)
    except BaseException:
        _stop(proc, pids)
        raise
    return proc, pids


def _journal_lines(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _stop(proc: subprocess.Popen, pids: Path) -> None:
    """Kill the script and any of its workers still alive (a failed test leaves none)."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)
    for pid in _worker_pids(pids):
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def _worker_pids(pids: Path) -> List[int]:
    return [int(p.name) for p in pids.iterdir()]


def _assert_gone(pids: List[int], within: float) -> None:
    assert_pids_gone(pids, within, "worker processes")


def test_ctrl_c_stops_workers_flushes_dlq_and_propagates(tmp_path: Path, start_method: str) -> None:
    proc, pids = _start_script(tmp_path, start_method)
    try:
        workers = _worker_pids(pids)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
        assert time.monotonic() - sent < 5
        assert proc.returncode != 0
        assert b"KeyboardInterrupt" in err, err.decode(errors="replace")[-2000:]
        _assert_gone(workers, within=5.0)
    finally:
        _stop(proc, pids)
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path / "dlq")))
    assert [e.item for e in dlq.get_entries()] == [0]  # flushed before the interrupt propagated


def test_parent_sigkill_takes_the_workers_down(tmp_path: Path, start_method: str) -> None:
    proc, pids = _start_script(tmp_path, start_method)
    try:
        workers = _worker_pids(pids)
        proc.kill()
        proc.communicate(timeout=10)
        _assert_gone(workers, within=5.0)
    finally:
        _stop(proc, pids)


# -- a worker that dies before it starts its chunk ------------------------------------


def _refuse_to_load() -> Any:
    raise RuntimeError("this function cannot be loaded in a worker")


class Unloadable:
    """Pickles fine in the parent, but unpickling it (in the worker) raises."""

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


def test_a_function_that_cannot_load_in_the_worker_fails_fast_and_blames_no_item() -> None:
    # Regression: each worker death before its first item was reported as a crash of the
    # chunk's first item, so innocent items were dead-lettered until CrashLoopError.
    dlq = memory_dlq()
    with pytest.raises(CrashLoopError) as info:
        execute(Unloadable(), range(40), n_jobs=2, chunksize=4, dlq=dlq, start_method="fork")
    assert len(dlq) == 0, f"{len(dlq)} items dead-lettered for a worker that never ran them"
    assert "cannot be loaded in a worker" in str(info.value)
    assert "could not load the function" in str(info.value)


def test_a_worker_killed_while_idle_blames_no_item() -> None:
    spec = ChunkSpec(double, None, True, "double")
    pool = LocalProcessPool(spec, n_jobs=1, start_method="fork", timeout=None)
    try:
        (worker,) = pool._workers
        worker.process.kill()  # e.g. the OOM killer picks an idle worker
        worker.process.join()
        pool.submit(ChunkTask(0, 0, [1, 2, 3]))
        events: List[Any] = []
        while not events:
            events = pool.wait(5)
        (event,) = events
        assert isinstance(event, ChunkDone), event
        assert event.result.values == [2, 4, 6]
    finally:
        pool.close(kill=True)
