"""Shared DLQ faults: a SIGKILLed manager, a SIGKILLed owner, unpicklable errors, reraise.

Every test here must end with a clear error, never a hang: each has a timeout,
and the waits inside are bounded.
"""

from __future__ import annotations

import concurrent.futures
import copyreg
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from typing import Any, Iterator, List

import psutil
import pytest

from amorsize import (
    DeadLetterQueue,
    DLQPolicy,
    Failure,
    SharedDeadLetterQueue,
    SharedDLQUnavailableError,
    TaskFailedError,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("no_leaked_children")


class TwoArgError(Exception):
    """Cannot be unpickled: __init__ needs two arguments. A plain Pool hangs on these."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


@pytest.fixture(autouse=True)
def _two_arg_error_stays_unpicklable():
    """Importing dask.distributed (its plugin tests share this session) installs tblib's
    pickling for every exception class that exists at that moment, which would make
    TwoArgError picklable; undo it so these tests exercise the unpicklable case."""
    copyreg.dispatch_table.pop(TwoArgError, None)
    yield


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def fail_two_arg(x: int) -> int:
    if x % 2:
        raise TwoArgError(x, "unpicklable")
    return x


def _manager_pid(queue: SharedDeadLetterQueue) -> int:
    return int(queue._manager._process.pid)  # type: ignore[union-attr]


def _kill_manager(queue: SharedDeadLetterQueue) -> None:
    process = queue._manager._process  # type: ignore[union-attr]
    os.kill(process.pid, signal.SIGKILL)
    process.join(5)
    assert not process.is_alive()


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def queue(tmp_path: Any, start_method: str) -> Iterator[SharedDeadLetterQueue]:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "dlq"), start_method=start_method) as q:
        yield q


# --- the manager dies -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_parent_calls_fail_clearly_after_manager_sigkill(queue: SharedDeadLetterQueue) -> None:
    queue.add(1, ValueError("before"))
    socket_dir = os.path.dirname(str(queue.address))
    _kill_manager(queue)
    calls: List[Any] = [
        queue.size, queue.get_entries, queue.get_summary, queue.flush, queue.clear,
        lambda: queue.add(2, ValueError("after")),
        lambda: queue.filter(error_type="ValueError"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(SharedDLQUnavailableError) as info:
            call()
        assert time.monotonic() - started < 5
        assert str(queue.address) in str(info.value) and info.value.address == queue.address
        assert "died" in str(info.value) or "reachable" in str(info.value)
    with pytest.raises(SharedDLQUnavailableError):
        SharedDeadLetterQueue.connect(queue.address, queue.authkey)
    started = time.monotonic()
    queue.close()
    assert time.monotonic() - started < 5
    assert not os.path.exists(socket_dir)


@pytest.mark.timeout(90)
def test_hook_in_workers_fails_clearly_after_manager_sigkill(
    queue: SharedDeadLetterQueue, start_method: str
) -> None:
    hook = queue.capture(fail_odd)
    with multiprocessing.get_context(start_method).Pool(2) as pool:
        # Connect at least one worker first, so both paths run: a kept connection that
        # breaks, and a fresh connection that is refused.
        assert pool.map(hook, [1, 2, 3, 4], chunksize=1)[1::2] == [2, 4]
        assert queue.size() == 2
        _kill_manager(queue)
        started = time.monotonic()
        assert pool.map(hook, [0, 2, 4, 6], chunksize=1) == [0, 2, 4, 6]  # success: no manager call
        with pytest.raises(SharedDLQUnavailableError) as info:
            pool.map(hook, list(range(1, 12, 2)), chunksize=1)
        assert time.monotonic() - started < 10
        error = info.value
        assert error.address == queue.address and str(queue.address) in str(error)
        assert error.failure is not None and error.failure.item % 2 == 1
        assert error.failure.error_type == "ValueError" and "odd" in str(error)
        # The pool survives: workers raised an exception, they did not die.
        assert pool.apply_async(hook, (8,)).get(timeout=10) == 8
        pool.close()
        pool.join()


@pytest.mark.timeout(60)
def test_close_with_workers_still_connected(tmp_path: Any, start_method: str) -> None:
    queue = SharedDeadLetterQueue(DLQPolicy(directory=tmp_path))
    manager = _manager_pid(queue)
    hook = queue.capture(fail_odd)
    try:
        with multiprocessing.get_context(start_method).Pool(2) as pool:
            assert sum(isinstance(r, Failure) for r in pool.map(hook, range(10), chunksize=1)) == 5
            started = time.monotonic()
            queue.close()  # both workers still hold a connection to the manager
            assert time.monotonic() - started < 5
            assert _gone_within(manager, 3)
            with pytest.raises(SharedDLQUnavailableError):
                pool.apply_async(hook, (1,)).get(timeout=10)
            pool.close()
            pool.join()
    finally:
        queue.close()
    assert sorted(e.item for e in DeadLetterQueue(DLQPolicy(directory=tmp_path)).get_entries()) == [
        1, 3, 5, 7, 9,
    ]


# --- the owner dies ---------------------------------------------------------------

OWNER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from amorsize import DLQPolicy, SharedDeadLetterQueue

    queue = SharedDeadLetterQueue(DLQPolicy(directory=sys.argv[1]), start_method=sys.argv[2])
    queue.add("written before the owner died", ValueError("x"))
    print(queue._manager._process.pid, queue.address, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.timeout(60)
def test_manager_exits_when_its_owner_is_sigkilled(tmp_path: Any, start_method: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, str(tmp_path), start_method],
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, "the owner process printed nothing"
        manager_pid, address = int(line.split()[0]), line.split()[1]
        assert psutil.pid_exists(manager_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
    assert _gone_within(manager_pid, 3), "the manager outlived the process that owned it"
    entries = DeadLetterQueue(DLQPolicy(directory=tmp_path)).get_entries()
    assert [e.item for e in entries] == ["written before the owner died"]
    assert not os.path.exists(os.path.dirname(address)), "the private socket directory was left behind"


# --- errors a pool cannot carry ---------------------------------------------------


@pytest.mark.timeout(60)
def test_unpicklable_exception_does_not_hang_the_pool(
    queue: SharedDeadLetterQueue, start_method: str
) -> None:
    with multiprocessing.get_context(start_method).Pool(2) as pool:
        results = pool.map(queue.capture(fail_two_arg), range(6), chunksize=2)
        assert [None if isinstance(r, Failure) else r for r in results] == [0, None, 2, None, 4, None]
        assert all(isinstance(r, Failure) and r.error_type == "TwoArgError" for r in results[1::2])
        assert sorted(e.item for e in queue.get_entries()) == [1, 3, 5]
        assert {e.error_message for e in queue.get_entries()} == {
            "1: unpicklable", "3: unpicklable", "5: unpicklable",
        }

        queue.clear()
        with pytest.raises(TaskFailedError) as info:
            pool.map(queue.capture(fail_two_arg, reraise=True), range(4), chunksize=1)
        assert info.value.error_type == "TwoArgError"
        assert "unpicklable" in info.value.error_message
        assert info.value.traceback_text and "fail_two_arg" in info.value.traceback_text
        # Pool.map stops at the first error, but every failure reached the DLQ first.
        assert sorted(e.item for e in queue.get_entries()) == [1, 3]
        pool.close()
        pool.join()


@pytest.mark.timeout(60)
def test_reraise_keeps_the_original_type(queue: SharedDeadLetterQueue, start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    hook = queue.capture(fail_odd, reraise=True)
    with ctx.Pool(2) as pool:
        with pytest.raises(ValueError, match="odd 3"):
            pool.map(hook, [2, 3, 4])
        pool.close()
        pool.join()
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        futures = [executor.submit(hook, i) for i in (5, 6)]
        with pytest.raises(ValueError, match="odd 5"):
            futures[0].result(timeout=30)
        assert futures[1].result(timeout=30) == 6
    assert sorted(e.item for e in queue.get_entries()) == [3, 5]


@pytest.mark.timeout(60)
def test_fork_after_the_parent_connected(queue: SharedDeadLetterQueue) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    hook = queue.capture(fail_odd)
    assert not hook(1)  # the parent now keeps a connection; forked workers must not share it
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(hook, range(40), chunksize=1)
        pool.close()
        pool.join()
    assert sum(isinstance(r, Failure) for r in results) == 20
    assert not hook(41)  # the parent's own connection still works
    assert sorted(e.item for e in queue.get_entries()) == [1, *range(1, 40, 2), 41]


@pytest.mark.timeout(30)
def test_socket_dir_stays_private_whatever_the_umask(tmp_path: Any) -> None:
    old = os.umask(0)
    try:
        with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "d")) as queue:
            queue.add(1, ValueError("x"))
            queue.flush()
            assert stat.S_IMODE(os.stat(os.path.dirname(str(queue.address))).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(tmp_path / "d" / "dlq.jsonl").st_mode) == 0o600
    finally:
        os.umask(old)


def _fail_all(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.mark.timeout(60)
def test_many_workers_failing_at_once(queue: SharedDeadLetterQueue, start_method: str) -> None:
    with multiprocessing.get_context(start_method).Pool(4) as pool:
        results = pool.map(queue.capture(_fail_all), range(2000), chunksize=5)
        pool.close()
        pool.join()
    assert all(isinstance(r, Failure) for r in results)
    assert sorted(e.item for e in queue.get_entries()) == list(range(2000))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_many_workers_failing_at_once_soak(tmp_path: Any, start_method: str) -> None:
    policy = DLQPolicy(directory=tmp_path, max_entries=0)
    with SharedDeadLetterQueue(policy, start_method=start_method) as queue:
        with multiprocessing.get_context(start_method).Pool(8) as pool:
            for round_ in range(5):
                items = range(round_ * 20_000, (round_ + 1) * 20_000)
                results = pool.map(queue.capture(_fail_all), items, chunksize=1 + round_ * 7)
                assert all(isinstance(r, Failure) for r in results)
            pool.close()
            pool.join()
        assert queue.size() == 100_000
    reopened = DeadLetterQueue(DLQPolicy(directory=tmp_path, max_entries=0))
    assert sorted(e.item for e in reopened.get_entries()) == list(range(100_000))
