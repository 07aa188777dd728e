"""A stopped manager blocks no one (issue 13, "Deliver" 6).

SIGSTOP the shared DLQ's manager process: every call from the parent, and every
worker hook that needs the manager to write (acked lane), gives up after
``SharedDeadLetterQueue(timeout=...)`` with a ``SharedDLQUnavailableError`` carrying
the failure it could not record, as for a dead manager. (Before: still blocked
after 8 s, with no timeout at all.) A hook that appends to the journal itself
(issue 18) records the failure without the manager; it gives up only if the
journal's lock stays held past the timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
import time
from typing import Any, Iterator

import pytest
from _stopping import wait_until_stopped

from amorsize import AmorsizeError, DLQPolicy, Failure, SharedDeadLetterQueue, SharedDLQUnavailableError

pytestmark = pytest.mark.usefixtures("no_leaked_children")

#: The deadline the tests ask for, and the slack a loaded 2-core machine may add to it.
CALL_TIMEOUT = 2.0
SLACK = 25.0
SHUTDOWN_BOUND = 60.0


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def inbox_text(inbox: str) -> str:
    """What the workers wrote to their files in a manager's inbox (amorsize.dlq.inbox)."""
    text = ""
    for name in os.listdir(inbox):
        if name.endswith(".jsonl"):
            with open(os.path.join(inbox, name)) as handle:
                text += handle.read()
    return text


def manager_pid(queue: SharedDeadLetterQueue) -> int:
    return int(queue._manager._process.pid)  # type: ignore[union-attr]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until_stopped(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def shared_queue(tmp_path: Any, start_method: str, **policy: Any) -> SharedDeadLetterQueue:
    return SharedDeadLetterQueue(
        DLQPolicy(directory=tmp_path / "dlq", **policy), start_method=start_method,
        timeout=CALL_TIMEOUT,
    )


@pytest.mark.timeout(150)
def test_parent_calls_give_up_on_a_stopped_manager(tmp_path, start_method):
    queue = shared_queue(tmp_path, start_method)
    try:
        queue.add(0, ValueError("before"))
        with stopped(manager_pid(queue)):
            started = time.monotonic()
            with pytest.raises(SharedDLQUnavailableError) as info:
                queue.size()
            assert time.monotonic() - started < CALL_TIMEOUT + SLACK
            assert info.value.address == queue.address
            started = time.monotonic()
            with pytest.raises(SharedDLQUnavailableError) as info:
                queue.add(7, ValueError("during the stop"))
            assert time.monotonic() - started < CALL_TIMEOUT + SLACK
            failure = info.value.failure
            assert failure is not None, "the unrecorded failure was not handed back"
            assert failure.item == 7 and failure.error_type == "ValueError"
    finally:
        started = time.monotonic()
        queue.close()
        assert time.monotonic() - started < SHUTDOWN_BOUND


@pytest.mark.timeout(200)
def test_worker_hooks_give_up_on_a_stopped_manager(tmp_path, start_method):
    # dedupe=True: the manager writes each failure (acked lane), so the hook needs it.
    queue = shared_queue(tmp_path, start_method, dedupe=True)
    try:
        hook = queue.capture(fail_odd)
        assert hook.journal is None
        with multiprocessing.get_context(start_method).Pool(1) as pool:
            assert pool.map(hook, [1, 2], chunksize=1)[1] == 2  # connected, one failure recorded
            assert queue.size() == 1
            with stopped(manager_pid(queue)):
                started = time.monotonic()
                pending = pool.apply_async(hook, (3,))
                with pytest.raises(SharedDLQUnavailableError) as info:
                    pending.get(timeout=CALL_TIMEOUT + SLACK + 30)
                assert time.monotonic() - started < CALL_TIMEOUT + SLACK
                failure = info.value.failure
                assert failure is not None and failure.item == 3
                assert "odd 3" in failure.error_message
                # Successes need no manager call: the pool keeps working.
                assert pool.apply_async(hook, (4,)).get(timeout=SLACK) == 4
            pool.terminate()
            pool.join()
    finally:
        queue.close()


@pytest.mark.timeout(200)
def test_journaling_hooks_record_failures_while_the_manager_is_stopped(tmp_path, start_method):
    queue = shared_queue(tmp_path, start_method)
    try:
        hook = queue.capture(fail_odd)
        assert hook.journal is not None
        with multiprocessing.get_context(start_method).Pool(1) as pool:
            assert pool.map(hook, [1, 2], chunksize=1)[1] == 2
            assert queue.size() == 1
            with stopped(manager_pid(queue)):
                started = time.monotonic()
                result = pool.apply_async(hook, (3,)).get(timeout=CALL_TIMEOUT + SLACK + 30)
                assert time.monotonic() - started < CALL_TIMEOUT + SLACK
                assert isinstance(result, Failure) and result.entry_id
                # On disk (the worker's file in the inbox) while the manager is still stopped.
                written = inbox_text(hook.journal[0])
                assert result.entry_id in written and "odd 3" in written
            assert sorted(e.item for e in queue.get_entries()) == [1, 3]
            pool.terminate()
            pool.join()
    finally:
        queue.close()


@pytest.mark.timeout(200)
def test_journaling_hooks_never_wait_for_the_journal_lock(tmp_path, start_method):
    """What a manager stopped in the middle of an append looks like to a worker: nothing.

    Hooks write to their own files in the inbox, so a journal lock held for ever (by a
    stopped manager or another process) costs them no wait; the manager moves their
    lines into the journal once the lock is free.
    """
    queue = shared_queue(tmp_path, start_method)
    try:
        hook = queue.capture(fail_odd)
        with multiprocessing.get_context(start_method).Pool(1) as pool:
            assert pool.map(hook, [1, 2], chunksize=1)[1] == 2
            fd = os.open(tmp_path / "dlq" / ".dlq.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                started = time.monotonic()
                result = pool.apply_async(hook, (3,)).get(timeout=CALL_TIMEOUT + SLACK + 30)
                assert time.monotonic() - started < SLACK
                assert isinstance(result, Failure) and result.entry_id
            finally:
                os.close(fd)
            assert not pool.apply_async(hook, (5,)).get(timeout=SLACK)
            assert sorted(e.item for e in queue.get_entries()) == [1, 3, 5]
            pool.terminate()
            pool.join()
    finally:
        queue.close()


def test_timeout_is_validated(tmp_path):
    for bad in (0, -1, "30", float("nan")):
        with pytest.raises(AmorsizeError, match="timeout"):
            SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "dlq"), timeout=bad)
