"""The shared queue's inbox: workers' own files, moved into the journal (amorsize.dlq.inbox).

Each worker process appends its failures to its own file in the manager's inbox; the
manager moves them into the journal. When the manager dies (SIGKILL), the next queue
that opens the directory adopts what it had not moved: every failure whose hook
returned is in the journal once, nothing it removed comes back, and nothing outside
the inbox (a symlink, a FIFO) is read. Tests SIGSTOP the manager where they need lines
that it cannot have moved yet, so the adoption (not the manager) must deliver them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import stat
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterator, List, Optional, Sequence, Set, Tuple, cast

import psutil
import pytest
from _stopping import wait_until_stopped

import amorsize.dlq.inbox as inbox_module
from amorsize import DeadLetterQueue, DLQPolicy, Failure, SharedDeadLetterQueue
from amorsize.dlq import capture
from amorsize.replay import replay_failed_items

pytestmark = pytest.mark.usefixtures("no_leaked_children")

LOGGER = "amorsize.dlq"
MOVED = "failure record(s) of a stopped shared queue"


# --- what the workers run --------------------------------------------------------------

_barrier: Any = None


def _set_barrier(barrier: Any) -> None:
    """Pool initializer: the barrier the warm-up items wait at."""
    global _barrier
    _barrier = barrier


def fail(x: Any) -> Any:
    """Every item fails; a negative one first waits at the barrier, so that each of the
    pool's two workers takes one of the two warm-up items (and connects to the manager)."""
    if isinstance(x, int) and x < 0:
        _barrier.wait(timeout=30)
    raise ValueError(f"bad {x}")


def fail_or_die(x: Any) -> Any:
    if x == "die":
        os._exit(1)  # a worker that dies inside the function: its hook never returns
    raise ValueError(f"bad {x}")


def _record_then_die(hook: Any, count: int, conn: Connection) -> None:
    """In a child process: record ``count`` failures, sending each returned id, then die."""
    for i in range(count):
        conn.send(hook(i).entry_id)
    conn.send(sorted(os.listdir(hook.journal[0])))
    hook("die")


def _record_wait_record_die(hook: Any, conn: Connection) -> None:
    """In a child process: record item 0 (connected), wait for a count, record that many
    more, sending each returned id, then die inside the function."""
    conn.send(hook(0).entry_id)
    for i in range(1, conn.recv() + 1):
        conn.send(hook(i).entry_id)
    hook("die")


def replay_half(x: int) -> int:
    if x >= 10:
        raise RuntimeError(f"still bad {x}")
    return x


# --- helpers ---------------------------------------------------------------------------


def _received_until_closed(conn: Connection) -> List[Any]:
    """Everything a child sends on ``conn`` until it closes its end (or dies)."""
    received = []
    while True:
        try:
            received.append(conn.recv())
        except EOFError:
            return received


def _process(queue: SharedDeadLetterQueue) -> Any:
    manager = queue._manager
    assert manager is not None
    return cast(Any, manager)._process


def stop_manager(queue: SharedDeadLetterQueue) -> None:
    """Freeze the manager: what hooks write from now on stays in the inbox."""
    pid = _process(queue).pid
    os.kill(pid, signal.SIGSTOP)
    wait_until_stopped(pid)


def resume_manager(queue: SharedDeadLetterQueue) -> None:
    os.kill(_process(queue).pid, signal.SIGCONT)


def kill_manager(queue: SharedDeadLetterQueue, *, close: bool = True) -> None:
    """SIGKILL the manager and reap it; ``close``: then close the handle, which closes
    this process's files in the inbox (as a worker's exit does)."""
    process = _process(queue)
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    assert process.exitcode == -signal.SIGKILL
    if close:
        queue.close()


@contextlib.contextmanager
def shared(directory: Any, **options: Any) -> Iterator[SharedDeadLetterQueue]:
    """A shared queue that is closed (or its killed manager reaped) whatever happens."""
    start_method = options.pop("start_method", None)
    timeout = options.pop("timeout", 30.0)
    queue = SharedDeadLetterQueue(DLQPolicy(directory=directory, **options), start_method=start_method,
                                  timeout=timeout)
    try:
        yield queue
    finally:
        process = _process(queue) if queue._manager is not None else None
        if process is not None and process.is_alive():
            os.kill(process.pid, signal.SIGCONT)  # a failed test may leave it stopped
        queue.close()
        if process is not None:
            process.join(10)


@contextlib.contextmanager
def two_worker_pool(method: str) -> Iterator[Any]:
    """A Pool(2) whose workers wait at a barrier for the warm-up items; closed and joined."""
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(2, initializer=_set_barrier, initargs=(ctx.Barrier(2),))
    pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
    try:
        yield pool
        pool.close()
        pool.join()
    finally:
        pool.terminate()
        pool.join()
    _, alive = psutil.wait_procs([p for p in map(_maybe_process, pids) if p is not None], timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _maybe_process(pid: int) -> Optional[psutil.Process]:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def warm_up(pool: Any, hook: Any) -> List[Failure]:
    """Each worker records one failure (items -1, -2): both are connected, with a file."""
    results = pool.map(hook, [-1, -2], chunksize=1)
    pids = {int(name.split("-")[0]) for name in segments(hook.journal[0])}
    assert pids == {p.pid for p in pool._pool}
    return cast(List[Failure], results)


def inboxes(directory: Any) -> List[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(inbox_module.INBOX_PREFIX))


def segments(inbox: str) -> List[str]:
    return sorted(n for n in os.listdir(inbox) if n.endswith(".jsonl"))


def journal_lines(directory: Any) -> List[dict]:
    """Every line of the journal, each a whole JSON record."""
    with open(os.path.join(directory, "dlq.jsonl"), "rb") as handle:
        data = handle.read()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def reopened(directory: Any, **options: Any) -> Tuple[List[str], List[Any]]:
    """(ids, items) of the queue a fresh DeadLetterQueue on ``directory`` loads."""
    queue = DeadLetterQueue(DLQPolicy(directory=directory, **options))
    try:
        entries = queue.get_entries()
    finally:
        queue.close()
    return [e.entry_id for e in entries], [e.item for e in entries]


def ids_of(results: Sequence[Any]) -> List[str]:
    assert all(isinstance(r, Failure) and not r for r in results)
    return [r.entry_id for r in results]


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> List[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.fixture
def manager_log(tmp_path: Any) -> Iterator[Callable[[], str]]:
    """What processes forked from now on log on "amorsize.dlq" (the manager's WARNINGs),
    each line prefixed with its pid: a FileHandler the forked manager inherits."""
    path = tmp_path / "manager.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield lambda: path.read_text()
    finally:
        logger.removeHandler(handler)
        handler.close()


# --- 1. a killed manager's inbox is adopted ----------------------------------------------


@pytest.mark.timeout(120)
def test_a_killed_managers_inbox_is_adopted_once_by_the_next_queue(tmp_path, start_method, caplog):
    """Every failure a pool's hooks returned survives a SIGKILLed manager, exactly once:
    what it had moved is not doubled, what it had not is adopted, the inbox goes away."""
    directory = tmp_path / "dlq"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with shared(directory) as dlq:
        hook = dlq.capture(fail)
        inbox = hook.journal[0]
        with two_worker_pool(start_method) as pool:
            results = warm_up(pool, hook)
            results += pool.map(hook, range(100), chunksize=7)
            assert dlq.size() == 102  # moved into the journal by the manager
            stop_manager(dlq)
            results += pool.map(hook, range(100, 400), chunksize=7)  # only in the inbox now
            # Killed before the workers exit: a forked worker's proxy finalizer would wait
            # for a stopped manager (the next test has its workers exit first).
            kill_manager(dlq)
    assert inboxes(directory) == [os.path.basename(inbox)]  # left behind by the kill
    assert len(journal_lines(directory)) == 102

    ids, items = reopened(directory)
    assert sorted(items) == [-2, -1, *range(400)]
    assert len(ids) == len(set(ids)) == 402
    assert set(ids) == set(ids_of(results))
    assert inboxes(directory) == []
    (moved,) = warnings_of(caplog, MOVED)
    assert "moved 300 failure record(s)" in moved
    assert sorted(r["entry_id"] for r in journal_lines(directory)) == sorted(ids)

    caplog.clear()
    again, _ = reopened(directory)
    assert again == ids
    assert warnings_of(caplog, MOVED) == []


# --- 2, 3. nothing removed comes back ------------------------------------------------------


@pytest.mark.timeout(90)
def test_entries_cleared_before_the_kill_do_not_come_back(tmp_path, caplog):
    """clear() saves the inbox offsets: after a kill only what came later is adopted."""
    directory = tmp_path / "dlq"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # The pool first: its forked workers hold no proxy of the manager, so they exit at
    # once while it is stopped (the hooks reach it over their own lane).
    with two_worker_pool("fork") as pool, shared(directory) as dlq:
        hook = dlq.capture(fail)
        warm_up(pool, hook)
        pool.map(hook, range(50), chunksize=3)
        assert dlq.size() == 52
        assert dlq.clear() == 52
        stop_manager(dlq)
        later = pool.map(hook, range(50, 60), chunksize=1)
        pool.close()
        pool.join()  # the workers are gone: their files' locks are free
        kill_manager(dlq)

    ids, items = reopened(directory)
    assert sorted(items) == list(range(50, 60))
    assert sorted(ids) == sorted(ids_of(later))
    assert inboxes(directory) == []
    (moved,) = warnings_of(caplog, MOVED)
    assert "moved 10 failure record(s)" in moved


@pytest.mark.timeout(60)
def test_entries_removed_or_replayed_before_the_kill_do_not_come_back(tmp_path):
    """remove() and a replay compact the journal: the removed and the recovered entries
    stay gone after a kill, the ones that failed again keep their new version."""
    directory = tmp_path / "dlq"
    with shared(directory) as dlq:
        hook = dlq.capture(fail)
        first = ids_of([hook(i) for i in range(20)])
        assert dlq.remove(first[:5]) == 5
        to_replay = [e for e in dlq.get_entries() if 5 <= e.item < 12]
        recovered, still_failed = replay_failed_items(dlq, replay_half, entries=to_replay, function=None)
        assert recovered == list(range(5, 10))
        assert [e.item for e in still_failed] == [10, 11]
        stop_manager(dlq)
        later = ids_of([hook(i) for i in range(20, 25)])
        kill_manager(dlq)

    ids, items = reopened(directory)
    assert sorted(items) == list(range(10, 25))
    assert sorted(ids) == sorted(first[10:] + later)
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    try:
        retries = {e.item: (e.retry_count, e.error_type) for e in queue.get_entries()}
    finally:
        queue.close()
    assert retries[10] == retries[11] == (1, "RuntimeError")
    assert retries[12] == (0, "ValueError")


@pytest.mark.timeout(60)
def test_an_entry_removed_by_another_queue_does_not_come_back_after_a_kill(tmp_path):
    """A DeadLetterQueue on the same directory removes an entry the manager had moved;
    the manager is then killed: the removed entry must not be adopted again."""
    directory = tmp_path / "dlq"
    with shared(directory) as dlq:
        hook = dlq.capture(fail)
        ids = ids_of([hook(i) for i in range(10)])
        assert dlq.size() == 10  # all moved into the journal
        other = DeadLetterQueue(DLQPolicy(directory=directory))
        try:
            assert other.remove(ids[:3]) == 3
        finally:
            other.close()
        kill_manager(dlq)

    _, items = reopened(directory)
    assert sorted(items) == list(range(3, 10))


# --- 4, 5. what an orphan holds that is not a record ------------------------------------


def _orphan(directory: Any, count: int) -> Tuple[str, List[str], List[str]]:
    """A killed manager's inbox: (its path, ids moved before the kill, ids only in the inbox)."""
    with shared(directory) as dlq:
        hook = dlq.capture(fail)
        moved = ids_of([hook(i) for i in range(count)])
        assert dlq.size() == count
        stop_manager(dlq)
        pending = ids_of([hook(i) for i in range(count, 2 * count)])
        kill_manager(dlq)
    return hook.journal[0], moved, pending


@pytest.mark.timeout(60)
def test_a_torn_last_line_in_an_orphan_is_dropped_and_the_rest_adopted(tmp_path, caplog):
    """A writer killed mid-write leaves bytes after its last newline: they are dropped with
    a WARNING, the whole lines are adopted, and the journal then loads strictly."""
    directory = tmp_path / "dlq"
    inbox, moved, pending = _orphan(directory, 3)
    (segment,) = segments(inbox)
    torn = b'{"entry_id":"abc'
    with open(os.path.join(inbox, segment), "ab") as handle:
        handle.write(torn)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    ids, items = reopened(directory, strict=True)
    assert ids == moved + pending and items == list(range(6))
    assert len(warnings_of(caplog, f"dropped a torn last line ({len(torn)} bytes)")) == 1
    (adopted,) = warnings_of(caplog, MOVED)
    assert "moved 3 failure record(s)" in adopted
    assert not os.path.exists(inbox)
    assert all(b"abc" not in json.dumps(r).encode() for r in journal_lines(directory))
    assert reopened(directory, strict=True)[0] == ids


@pytest.mark.timeout(60)
def test_a_symlink_in_an_orphan_is_never_followed(tmp_path, caplog):
    """A symlink named like a segment, to a file of valid records elsewhere: nothing of it
    is adopted, a WARNING names it, and its target is left as it was."""
    elsewhere = tmp_path / "elsewhere"
    other = DeadLetterQueue(DLQPolicy(directory=elsewhere))
    planted = [other.add({"planted": i}, ValueError("not ours")).entry_id for i in range(3)]
    other.close()
    target = elsewhere / "dlq.jsonl"
    before = target.read_bytes()
    before_stat = os.stat(target)
    assert len(before.splitlines()) == 3

    directory = tmp_path / "dlq"
    inbox, moved, pending = _orphan(directory, 2)
    link = os.path.join(inbox, "123-00000000-deadbeef.jsonl")
    os.symlink(target, link)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    ids, items = reopened(directory)
    assert ids == moved + pending and items == [0, 1, 2, 3]
    assert not set(planted) & set(ids)
    assert warnings_of(caplog, "123-00000000-deadbeef.jsonl")
    assert target.read_bytes() == before
    after_stat = os.stat(target)
    assert (after_stat.st_ino, after_stat.st_mtime_ns, after_stat.st_mode) == (
        before_stat.st_ino, before_stat.st_mtime_ns, before_stat.st_mode)
    assert not os.path.lexists(link)


@pytest.mark.timeout(60)
def test_a_fifo_in_an_orphan_does_not_hang_the_queue_opening_the_directory(tmp_path, caplog):
    """A non-regular file named like a segment is skipped with a WARNING, never waited on."""
    directory = tmp_path / "dlq"
    inbox, moved, pending = _orphan(directory, 2)
    fifo = os.path.join(inbox, "123-00000000-deadbeef.jsonl")
    os.mkfifo(fifo, 0o600)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    found: List[Any] = []
    opener = threading.Thread(target=lambda: found.append(reopened(directory)), daemon=True)
    opener.start()
    opener.join(3)
    hung = opener.is_alive()
    if hung:
        release_fifo(fifo)
        opener.join(10)
    assert not hung, "opening the directory blocked on a FIFO in an orphan inbox"
    assert found and found[0][0] == moved + pending
    assert warnings_of(caplog, "123-00000000-deadbeef.jsonl")


def release_fifo(fifo: str) -> None:
    """End every open() blocked on ``fifo``, and remove it so none blocks again."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # Linux: a writer now, never blocks
    try:
        os.unlink(fifo)
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
def test_a_fifo_in_a_live_inbox_does_not_hang_the_manager(tmp_path):
    """The manager skips a non-regular file in its inbox; its queue keeps answering."""
    directory = tmp_path / "dlq"
    with shared(directory, timeout=3.0) as dlq:
        hook = dlq.capture(fail)
        ids = ids_of([hook(0)])
        fifo = os.path.join(hook.journal[0], "123-00000000-deadbeef.jsonl")
        os.mkfifo(fifo, 0o600)
        try:
            time.sleep(0.3)  # a few of the manager's rounds
            entries = dlq.get_entries()  # SharedDLQUnavailableError after 3 s if it hangs
        finally:
            release_fifo(fifo)
        assert [e.entry_id for e in entries] == ids


# --- 6. a live inbox is the manager's alone ------------------------------------------


@pytest.mark.timeout(60)
def test_a_live_inbox_is_never_adopted_by_another_queue(tmp_path, caplog):
    """A queue opening the directory of a running shared queue leaves its inbox alone,
    even holding lines the manager has not moved yet; nothing is doubled."""
    directory = tmp_path / "dlq"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with shared(directory) as dlq:
        hook = dlq.capture(fail)
        results = [hook(0)]
        assert dlq.size() == 1  # moved: the manager takes no journal lock until new lines come
        stop_manager(dlq)
        try:
            results += [hook(i) for i in range(1, 8)]
            inbox = hook.journal[0]
            other = DeadLetterQueue(DLQPolicy(directory=directory))
            try:
                assert [e.item for e in other.get_entries()] == [0]
            finally:
                other.close()
            assert os.path.isdir(inbox)
            (segment,) = segments(inbox)
            with open(os.path.join(inbox, segment), "rb") as handle:
                assert len(handle.read().splitlines()) == 8
            assert warnings_of(caplog, MOVED) == []
        finally:
            resume_manager(dlq)
        assert dlq.size() == 8
    ids, items = reopened(directory)
    assert items == list(range(8))
    assert ids == ids_of(results)
    assert inboxes(directory) == []
    assert warnings_of(caplog, MOVED) == []


@pytest.mark.timeout(60)
def test_a_live_managers_inbox_is_not_adopted_even_when_its_writers_are_gone(tmp_path, caplog):
    """The manager's own lock on its inbox keeps it: a worker that died while the manager
    was stopped leaves a file nobody writes, and still no other queue takes it."""
    directory = tmp_path / "dlq"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ctx = multiprocessing.get_context("fork")
    with shared(directory) as dlq:
        hook = dlq.capture(fail_or_die)
        inbox = hook.journal[0]
        conn, child_conn = ctx.Pipe()
        child = ctx.Process(target=_record_wait_record_die, args=(hook, child_conn))
        child.start()  # started (and connected) while the manager runs
        child_conn.close()
        ids = [conn.recv()]
        assert dlq.size() == 1
        stop_manager(dlq)
        try:
            conn.send(4)
            ids += _received_until_closed(conn)
            child.join(30)
            assert child.exitcode == 1 and len(ids) == 5
            other = DeadLetterQueue(DLQPolicy(directory=directory))
            try:
                assert other.size() == 1
            finally:
                other.close()
            assert os.path.isdir(inbox) and len(segments(inbox)) == 1
            assert warnings_of(caplog, MOVED) == []
        finally:
            resume_manager(dlq)
        assert [e.entry_id for e in dlq.get_entries()] == ids
        assert segments(inbox) == []  # its writer gone, read: removed by the manager
    assert reopened(directory)[0] == ids


@pytest.mark.timeout(60)
def test_an_orphan_with_a_live_writer_is_left_for_later(tmp_path, caplog):
    """The manager is dead but a worker still holds its file (it may write): the inbox is
    left as it is; once the worker is gone the next queue adopts it."""
    directory = tmp_path / "dlq"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with shared(directory) as dlq:
        hook = dlq.capture(fail)
        ids = ids_of([hook(0)])
        assert dlq.size() == 1
        stop_manager(dlq)
        ids += ids_of([hook(i) for i in range(1, 4)])
        kill_manager(dlq, close=False)  # this process still holds its file in the inbox
        inbox = hook.journal[0]
        early, _ = reopened(directory)
        assert early == ids[:1]
        assert os.path.isdir(inbox) and len(segments(inbox)) == 1
        assert warnings_of(caplog, MOVED) == []
        dlq.close()  # closes this process's file: its lock is free
    later, items = reopened(directory)
    assert later == ids and items == [0, 1, 2, 3]
    assert not os.path.exists(inbox)
    (moved,) = warnings_of(caplog, MOVED)
    assert "moved 3 failure record(s)" in moved


# --- 7. a worker that dies ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_the_file_of_a_dead_worker_is_read_then_removed(tmp_path, start_method):
    """A worker that dies (os._exit in the function): every failure whose hook returned is
    in the queue once, and the manager removes the worker's file once it has read it."""
    directory = tmp_path / "dlq"
    ctx = multiprocessing.get_context(start_method)
    with shared(directory) as dlq:
        hook = dlq.capture(fail_or_die)
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_record_then_die, args=(hook, 5, writer))
        child.start()
        writer.close()
        sent = _received_until_closed(reader)
        child.join(30)
        assert child.exitcode == 1
        *returned, seen = sent
        assert len(returned) == 5
        assert [n for n in seen if n.startswith(f"{child.pid}-")]  # it had a file
        assert dlq.size() == 5
        assert [n for n in os.listdir(hook.journal[0]) if n.startswith(f"{child.pid}-")] == []
        assert [e.entry_id for e in dlq.get_entries()] == returned
    assert inboxes(directory) == []  # no writer alive at close: the manager removed it
    ids, items = reopened(directory)
    assert ids == returned and items == list(range(5))


# --- 8. rotation ----------------------------------------------------------------------------


def _rotating_run(dlq: SharedDeadLetterQueue, count: int) -> Tuple[List[str], Set[str]]:
    """``count`` failures recorded in this process, the manager stopped meanwhile (all
    read at once after): their ids and the names of every file they were written to."""
    hook = dlq.capture(fail)
    inbox = hook.journal[0]
    ids = ids_of([hook(0)])
    seen = set(segments(inbox))
    assert dlq.size() == 1
    stop_manager(dlq)
    try:
        for i in range(1, count):
            ids += ids_of([hook(i)])
            seen.update(segments(inbox))
    finally:
        resume_manager(dlq)
    return ids, seen


@pytest.mark.timeout(60)
def test_a_writer_starts_a_new_file_and_the_manager_removes_the_old_once_read(tmp_path, monkeypatch):
    """Past ROTATE_BYTES a writer starts a new file; the manager reads the rotated-away
    ones whole and removes them, keeping only the file still being written."""
    monkeypatch.setattr(inbox_module, "ROTATE_BYTES", 2000)
    directory = tmp_path / "dlq"
    with shared(directory) as dlq:
        ids, seen = _rotating_run(dlq, 50)
        assert len(seen) >= 5
        assert dlq.size() == 50
        inbox = dlq.capture(fail).journal[0]
        left = segments(inbox)
        writer = capture._appenders[dlq._ingest_address]
        if writer._fd is None:  # the last line filled its file: it was closed too
            assert left == []
        else:
            (current,) = left
            assert os.stat(os.path.join(inbox, current)).st_ino == os.fstat(writer._fd).st_ino
        assert sorted(r["entry_id"] for r in journal_lines(directory)) == sorted(ids)
    assert sorted(reopened(directory)[1]) == list(range(50))


@pytest.mark.timeout(60)
def test_one_writers_failures_keep_their_order_across_its_files(tmp_path, monkeypatch):
    """The failures of one process enter the queue in the order its hooks returned, even
    when they span several of its files (the order max_entries prunes by)."""
    monkeypatch.setattr(inbox_module, "ROTATE_BYTES", 2000)
    directory = tmp_path / "dlq"
    with shared(directory) as dlq:
        ids, seen = _rotating_run(dlq, 50)
        assert len(seen) >= 5
        assert [e.entry_id for e in dlq.get_entries()] == ids


# --- 9. permissions ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_inbox_and_its_files_are_private_whatever_the_umask(tmp_path, start_method):
    """With umask 0 the inbox is still 0700 and a worker's file 0600."""
    directory = tmp_path / "dlq"
    old = os.umask(0)
    try:
        with shared(directory, start_method=start_method) as dlq:
            hook = dlq.capture(fail)
            assert not hook(1)
            inbox = hook.journal[0]
            assert stat.S_IMODE(os.stat(inbox).st_mode) == 0o700
            (segment,) = segments(inbox)
            assert stat.S_IMODE(os.stat(os.path.join(inbox, segment)).st_mode) == 0o600
            assert dlq.size() == 1
    finally:
        os.umask(old)


# --- 10. fsync ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("fsync", "synced_per_line"), [("always", 1), ("never", 0)])
def test_fsync_always_syncs_every_line_of_a_workers_file(tmp_path, monkeypatch, fsync, synced_per_line):
    """fsync="always": each hook fdatasyncs its line before it returns; "never" never does."""
    directory = tmp_path / "dlq"
    with shared(directory, fsync=fsync) as dlq:
        synced: List[Tuple[int, int]] = []
        real = os.fdatasync

        def spy(fd: int) -> None:
            info = os.fstat(fd)
            synced.append((info.st_dev, info.st_ino))
            real(fd)

        monkeypatch.setattr(os, "fdatasync", spy)  # this process only: the manager runs already
        hook = dlq.capture(fail)
        assert hook.journal[1] == fsync
        ids = ids_of([hook(i) for i in range(6)])
        inbox = hook.journal[0]
        (segment,) = segments(inbox)
        info = os.stat(os.path.join(inbox, segment))
        assert synced.count((info.st_dev, info.st_ino)) == 6 * synced_per_line
        assert [e.entry_id for e in dlq.get_entries()] == ids
    assert reopened(directory)[0] == ids


# --- 11. a line that is not a record, in a live inbox -------------------------------------


def _live_garbage(directory: Any, garbage: bytes) -> Tuple[List[str], List[Any], int]:
    """Record 1, append ``garbage`` to this process's file, record 2; return (the ids
    written, the items the manager held, its pid). The queue is closed after."""
    with shared(directory, start_method="fork") as dlq:
        hook = dlq.capture(fail)
        ids = ids_of([hook(1)])
        (segment,) = segments(hook.journal[0])
        with open(os.path.join(hook.journal[0], segment), "ab") as handle:
            handle.write(garbage)
        ids += ids_of([hook(2)])
        items = [e.item for e in dlq.get_entries()]
        manager_pid = _process(dlq).pid
    return ids, items, manager_pid


@pytest.mark.timeout(60)
def test_a_line_that_is_not_json_in_a_live_inbox_is_dropped(tmp_path, manager_log):
    """A whole line that is not JSON is dropped by the manager with a WARNING; the lines
    around it are taken and the journal loads strictly after close."""
    directory = tmp_path / "dlq"
    garbage = b"not json\n"
    ids, items, manager_pid = _live_garbage(directory, garbage)
    assert items == [1, 2]
    assert [ln for ln in manager_log().splitlines() if ln.startswith(f"{manager_pid} WARNING")
            and "dropped 1 line(s) that are not whole records (1 so far)" in ln]
    assert [r["entry_id"] for r in journal_lines(directory)] == ids
    assert reopened(directory, strict=True) == (ids, [1, 2])


@pytest.mark.timeout(60)
def test_a_line_with_an_id_that_is_not_a_record_in_a_live_inbox_is_dropped(tmp_path, manager_log):
    """A whole line that has an entry id but is not a valid record never reaches the journal
    (an orphan's adoption drops it): a strict reopen after close must load."""
    directory = tmp_path / "dlq"
    garbage = b'{"entry_id":"0123456789abcdef0123456789abcdef","v":1}\n'
    ids, items, manager_pid = _live_garbage(directory, garbage)
    assert items == [1, 2]
    assert reopened(directory, strict=True) == (ids, [1, 2])  # DLQCorruptError at line 2
    assert [r["entry_id"] for r in journal_lines(directory)] == ids
    assert [ln for ln in manager_log().splitlines() if ln.startswith(f"{manager_pid} WARNING")
            and "dropped 1 line(s) that are not whole records" in ln]


@pytest.mark.timeout(60)
def test_lines_that_are_not_records_are_reported_once_with_a_count(tmp_path, manager_log):
    """Before the fix, each such line logged its own WARNING: a flood for a file full of
    garbage. One WARNING with the count, then DEBUG (the rule for losses the code cannot
    prevent)."""
    directory = tmp_path / "dlq"
    with shared(directory, start_method="fork") as dlq:
        hook = dlq.capture(fail)
        ids = ids_of([hook(1)])
        (segment,) = segments(hook.journal[0])
        for _ in range(2):
            with open(os.path.join(hook.journal[0], segment), "ab") as handle:
                handle.write(b"garbage\n" * 30)
            assert dlq.size() == 1
        manager_pid = _process(dlq).pid
    warnings = [ln for ln in manager_log().splitlines() if ln.startswith(f"{manager_pid} WARNING")
                and "not whole records" in ln]
    assert len(warnings) == 1 and "dropped 30 line(s)" in warnings[0], warnings
    assert [r["entry_id"] for r in journal_lines(directory)] == ids


@pytest.mark.timeout(60)
def test_close_leaves_no_inbox_when_the_parent_recorded_failures_itself(tmp_path):
    """Before the fix, close() asked the manager to close before this process closed its
    own file, so the manager saw a live writer and left the inbox behind (for the next
    queue to clean up)."""
    directory = tmp_path / "dlq"
    queue = SharedDeadLetterQueue(DLQPolicy(directory=directory))
    hook = queue.capture(fail)
    ids = ids_of([hook(i) for i in range(5)])
    queue.close()
    assert sorted(os.listdir(directory)) == [".dlq.lock", "dlq.jsonl"]
    assert [r["entry_id"] for r in journal_lines(directory)] == ids
