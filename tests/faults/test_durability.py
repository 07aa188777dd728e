"""Durability is never silently weaker than asked (issue 13, "Deliver" 1 and 5).

A real full filesystem (a small tmpfs), ``RLIMIT_FSIZE`` in a child and a directory
an unprivileged user cannot write. The contract: ``add()`` returns only once the
entry reached the kernel, or the writer is told (``DLQPersistError`` with
``on_persist_error="raise"``; ``dlq.healthy`` False, one WARNING and an
``unpersisted`` count with ``"warn"``); ``flush()``/``close()`` raise
``DLQPersistError`` naming a 0600 rescue file that holds what could not be written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import warnings
from typing import Any, Dict, List, Set

import pytest
from fault_env import (  # noqa: F401 (fixtures, found by pytest under their own names)
    full_disk_fixture,
    run_as_unprivileged_fixture,
    traversable_dir_fixture,
)

import amorsize
from amorsize import AmorsizeError, Checkpoint, DeadLetterQueue, DLQError, DLQPolicy, execute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADDS_ON_FULL_DISK = 60

pytestmark = pytest.mark.usefixtures("no_leaked_children")


def persist_error_type() -> type:
    """``amorsize.DLQPersistError``, the error the issue asks for (absent on old code)."""
    error = getattr(amorsize, "DLQPersistError", None)
    assert error is not None, "amorsize.DLQPersistError does not exist"
    assert issubclass(error, DLQError)
    return error


def ids_on_disk(directory: str) -> Set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a torn, unacknowledged last record
        queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    try:
        return {e.entry_id for e in queue.get_entries()}
    finally:
        queue.close()


def rescue_path_in(message: str) -> str:
    """The existing file a message names (the rescue file)."""
    for candidate in re.findall(r"(/[^\s'\"`,;()]+)", message):
        candidate = candidate.rstrip(".:")
        if os.path.isfile(candidate):
            return candidate
    raise AssertionError(f"the message names no existing rescue file: {message}")


def seeded_journal(directory: str) -> str:
    """One record on disk first, so the journal owns a partly used page of the tmpfs:
    writes on the full disk then land short (torn), as on a real disk."""
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    entry_id = queue.add("seed", ValueError("seed")).entry_id
    queue.close()
    return entry_id


# --- acknowledged, then SIGKILL ---------------------------------------------------

WRITER = r"""
import json, sys, time
import amorsize
from amorsize import DeadLetterQueue, DLQPolicy

directory, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = {} if mode == "default" else {"on_persist_error": mode}
queue = DeadLetterQueue(DLQPolicy(directory=directory, **options))
error = ValueError("boom")
for n in range(count):
    try:
        entry = queue.add({"n": n, "pad": "x" * 300}, error)
    except amorsize.DLQPersistError:
        print(json.dumps({"raised": n}), flush=True)
        continue
    print(json.dumps({"ack": entry.entry_id, "healthy": queue.healthy}), flush=True)
print(json.dumps({"size": len(queue), "summary": queue.get_summary()}), flush=True)
print("done", flush=True)
time.sleep(600)
"""


def kill_writer_on_full_disk(directory: str, mode: str) -> List[Dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, directory, mode, str(ADDS_ON_FULL_DISK)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    events: List[Dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if raw.strip() == b"done":
                break
            events.append(json.loads(raw))
        else:
            proc.wait(60)
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"the writer exited early ({proc.returncode}):\n{stderr[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return events


@pytest.mark.timeout(120)
def test_default_policy_tells_the_writer_of_every_acknowledged_add_that_sigkill_can_lose(full_disk):
    """Why: 60 adds returned on a full disk, 37 of them were gone after a SIGKILL."""
    directory = os.path.join(full_disk.path, "dlq")
    seed = seeded_journal(directory)
    full_disk.fill()
    events = kill_writer_on_full_disk(directory, "default")
    full_disk.free()
    on_disk = ids_on_disk(directory)
    acks = [e for e in events if "ack" in e]
    assert len(acks) == ADDS_ON_FULL_DISK, "with on_persist_error='warn' add() does not raise"
    assert seed in on_disk
    unhealthy = [e for e in acks if not e["healthy"]]
    assert unhealthy, "the disk was full, yet every add reported a healthy queue"
    silently_lost = [e["ack"] for e in acks if e["ack"] not in on_disk and e["healthy"]]
    assert not silently_lost, f"{len(silently_lost)} adds acknowledged as healthy were lost"
    summary = events[-1]["summary"]
    assert summary["unpersisted"] == sum(1 for e in acks if e["ack"] not in on_disk)


@pytest.mark.timeout(120)
def test_raise_policy_every_add_that_returned_survives_sigkill(full_disk):
    directory = os.path.join(full_disk.path, "dlq")
    seeded_journal(directory)
    full_disk.fill()
    events = kill_writer_on_full_disk(directory, "raise")
    full_disk.free()
    on_disk = ids_on_disk(directory)
    acked = [e["ack"] for e in events if "ack" in e]
    raised = [e["raised"] for e in events if "raised" in e]
    assert raised, "the disk was full, yet no add raised DLQPersistError"
    lost = [i for i in acked if i not in on_disk]
    assert not lost, f"{len(lost)} of {len(acked)} adds returned normally and were lost"
    # The entries whose add raised stay in memory (so flush/close can rescue them).
    assert events[-1]["size"] == 1 + ADDS_ON_FULL_DISK


# --- flush and close tell, with a rescue file -------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["flush", "close"])
def test_flush_and_close_raise_with_a_private_rescue_file(full_disk, method):
    error_type = persist_error_type()
    directory = os.path.join(full_disk.path, "dlq")
    seeded_journal(directory)
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    full_disk.fill()
    added = [queue.add({"n": n, "pad": "y" * 500}, KeyError(n)).entry_id for n in range(20)]
    assert queue.healthy is False
    with pytest.raises(error_type) as info:
        getattr(queue, method)()
    rescue = rescue_path_in(str(info.value))
    assert not os.path.realpath(rescue).startswith(os.path.realpath(full_disk.path) + os.sep)
    assert stat.S_IMODE(os.lstat(rescue).st_mode) == 0o600
    try:
        unwritten = set(added) - ids_on_disk(directory)
        assert unwritten, "the disk was full, yet every entry reached the journal"
        reader = DeadLetterQueue(DLQPolicy(directory=os.path.dirname(rescue), auto_persist=False))
        reader.load(rescue)
        assert unwritten <= {e.entry_id for e in reader.get_entries()}
    finally:
        os.unlink(rescue)
    full_disk.free()
    queue.close()  # space is back: the backlog is written and close is quiet
    assert set(added) <= ids_on_disk(directory)


@pytest.mark.timeout(120)
def test_one_warning_per_streak_and_torn_tail_logged_at_most_once(full_disk, caplog):
    """Why: on a full disk "cut a torn last record" was logged at WARNING 320 times."""
    directory = os.path.join(full_disk.path, "dlq")
    seeded_journal(directory)
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    full_disk.fill()
    caplog.set_level(logging.DEBUG, logger="amorsize")
    for n in range(300):
        queue.add({"n": n, "pad": "z" * 200}, ValueError(n))
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("amorsize")]
    torn = [r for r in warned if "torn" in r.getMessage()]
    assert len(torn) <= 1, f"the torn-tail warning was logged {len(torn)} times in one run"
    persist = [r for r in warned if "torn" not in r.getMessage()]
    assert len(persist) == 1, [r.getMessage() for r in persist]
    full_disk.free()
    queue.close()


# --- RLIMIT_FSIZE -------------------------------------------------------------------

FSIZE_CHILD = r"""
import json, resource, signal, sys
import amorsize
from amorsize import DeadLetterQueue, DLQPolicy

limit = int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
queue = DeadLetterQueue(DLQPolicy(directory=sys.argv[1], on_persist_error="raise"))
acked, raised = [], None
for n in range(400):
    try:
        acked.append(queue.add({"n": n, "pad": "p" * 700}, ValueError(n)).entry_id)
    except amorsize.DLQPersistError as exc:
        raised = str(exc)
        break
try:
    queue.close()
    closed = None
except amorsize.DLQPersistError as exc:
    closed = str(exc)
print(json.dumps({"acked": acked, "raised": raised, "closed": closed}))
"""


@pytest.mark.timeout(120)
def test_rlimit_fsize_in_a_child_raises_and_loses_no_returned_add(tmp_path):
    directory = str(tmp_path / "dlq")
    limit = 32 * 1024
    done = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, directory, str(limit)],
        capture_output=True, text=True, timeout=100, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["raised"] is not None, "the file size limit was hit, yet no add raised"
    assert report["closed"] is not None, "close() returned with an entry it could not write"
    assert rescue_path_in(report["closed"])
    on_disk = ids_on_disk(directory)
    assert set(report["acked"]) <= on_disk
    assert os.path.getsize(os.path.join(directory, "dlq.jsonl")) <= limit


# --- a directory this user cannot write ------------------------------------------------


def _open_as_unprivileged(directory: str) -> Dict[str, Any]:
    try:
        queue = DeadLetterQueue(DLQPolicy(directory=directory))
    except DLQError as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    outcome: Dict[str, Any] = {"raised": None}
    queue.add("x", ValueError("lost?"))
    try:
        queue.close()
        outcome["close"] = "returned"
    except DLQError as exc:
        outcome["close"] = f"{type(exc).__name__}: {exc}"
    return outcome


@pytest.mark.timeout(120)
@pytest.mark.parametrize("existing", [True, False], ids=["existing-dir", "missing-dir"])
def test_unwritable_directory_is_refused_at_construction(run_as_unprivileged, traversable_dir, existing):
    """Why: one log line, close() returned silently, every entry lost at exit."""
    directory = os.path.join(traversable_dir, "dlq")
    if existing:
        os.mkdir(directory, 0o755)  # root's: nobody may enter but not write
    outcome = run_as_unprivileged(_open_as_unprivileged, directory)
    assert outcome["raised"] is not None, f"constructed on an unwritable directory: {outcome}"
    assert directory in outcome["message"] or traversable_dir in outcome["message"]
    assert re.search(r"writ|owned|permission", outcome["message"], re.I), outcome["message"]


# --- execute() with a DLQ that cannot persist; checkpoint preflight ------------------------


def always_fails(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.mark.timeout(120)
def test_execute_tells_the_caller_when_its_dlq_cannot_persist(full_disk, caplog):
    directory = os.path.join(full_disk.path, "dlq")
    seeded_journal(directory)
    dlq = DeadLetterQueue(DLQPolicy(directory=directory))
    full_disk.fill()
    caplog.set_level(logging.INFO, logger="amorsize")
    try:
        results = execute(always_fails, range(40), n_jobs=1, dlq=dlq)
    except AmorsizeError as exc:
        assert isinstance(exc, persist_error_type()), exc
        return
    failure_ids = {r.entry_id for r in results}
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    rescues = [m for m in warnings_ if "rescue" in m.lower()]
    assert rescues, f"execute() returned; the only warnings were {warnings_}"
    rescue = rescue_path_in(rescues[-1])
    try:
        reader = DeadLetterQueue(DLQPolicy(directory=os.path.dirname(rescue), auto_persist=False))
        reader.load(rescue)
        assert failure_ids - ids_on_disk(directory) <= {e.entry_id for e in reader.get_entries()}
    finally:
        os.unlink(rescue)
        full_disk.free()


class Counter:
    def __init__(self) -> None:
        self.calls: List[int] = []

    def __call__(self, x: int) -> int:
        self.calls.append(x)
        return x * 2


def _checkpoint_preflight(path: str) -> None:
    func = Counter()
    with pytest.raises(AmorsizeError) as info:
        execute(func, range(30), n_jobs=1, checkpoint=Checkpoint(path, every_items=5))
    assert func.calls == [], f"func was called {len(func.calls)} times before the error"
    assert os.path.dirname(path) in str(info.value) or path in str(info.value)


@pytest.mark.timeout(120)
def test_checkpoint_on_a_full_disk_fails_before_the_first_call(full_disk):
    """Why: a raw OSError after func had been called 23 times; 20 results not returned."""
    full_disk.fill()
    _checkpoint_preflight(os.path.join(full_disk.path, "run.ckpt"))


@pytest.mark.timeout(60)
def test_checkpoint_under_a_file_fails_before_the_first_call(tmp_path):
    (tmp_path / "plain").write_text("a file, not a directory")
    _checkpoint_preflight(str(tmp_path / "plain" / "run.ckpt"))


def _checkpoint_as_unprivileged(path: str) -> str:
    func = Counter()
    try:
        execute(func, range(30), n_jobs=1, checkpoint=Checkpoint(path, every_items=5))
    except AmorsizeError as exc:
        return f"calls={len(func.calls)} AmorsizeError {type(exc).__name__}: {exc}"
    except Exception as exc:
        return f"calls={len(func.calls)} raw {type(exc).__name__}: {exc}"
    return f"calls={len(func.calls)} returned"


@pytest.mark.timeout(120)
def test_checkpoint_in_an_unwritable_directory_fails_before_the_first_call(
    run_as_unprivileged, traversable_dir
):
    outcome = run_as_unprivileged(_checkpoint_as_unprivileged, os.path.join(traversable_dir, "run.ckpt"))
    assert outcome.startswith("calls=0 AmorsizeError"), outcome
    assert traversable_dir in outcome
