"""The circuit breaker and the checkpoint, wired into execute()."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from amorsize import (
    Checkpoint,
    CheckpointMismatchError,
    CircuitBreaker,
    DeadLetterQueue,
    DLQPolicy,
    InvalidArgumentError,
    execute,
)

ROOT = Path(__file__).resolve().parents[1]


def _down_service(log: str):
    def call(item):
        with open(log, "a") as handle:
            handle.write(f"{item}\n")
        raise ConnectionError("service down")

    return call


def _calls(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_open_circuit_dead_letters_without_calling(tmp_path, n_jobs, no_leaked_children):
    log = tmp_path / "calls.txt"
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=3600)
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    out = execute(_down_service(str(log)), range(200), n_jobs=n_jobs, dlq=dlq,
                  circuit_breaker=breaker)
    assert _calls(log) == 5  # exactly failure_threshold calls, none while open
    reasons = Counter(e.reason for e in dlq.get_entries())
    assert reasons == {"exception": 5, "circuit_open": 195}
    assert len(out) == 200 and not any(out)
    # every item is in the DLQ exactly once, so a replay recovers all of them
    assert sorted(e.item for e in dlq.get_entries()) == list(range(200))


@pytest.mark.timeout(60)
def test_half_open_probes_are_bounded(tmp_path, no_leaked_children):
    log = tmp_path / "calls.txt"
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=0.2, half_open_max_calls=1)
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    started = time.monotonic()
    execute(_down_service(str(log)), range(8), n_jobs=2, dlq=dlq, circuit_breaker=breaker,
            on_open="wait")
    elapsed = time.monotonic() - started
    # 3 calls open it; each remaining item is one half-open probe after a reset timeout
    assert _calls(log) == 8
    assert elapsed >= 5 * 0.2 * 0.9
    assert Counter(e.reason for e in dlq.get_entries()) == {"exception": 8}


def test_on_open_is_validated():
    with pytest.raises(InvalidArgumentError, match="on_open='later'"):
        execute(abs, [1], circuit_breaker=CircuitBreaker(), on_open="later")


CALLS: list = []


def _logged_abs(x):
    CALLS.append(x)
    return abs(x)


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    path = tmp_path / "run.ckpt"
    CALLS.clear()
    assert execute(_logged_abs, [-1, -2, -3], n_jobs=1,
                   checkpoint=Checkpoint(path, every_items=1, keep=True)) == [1, 2, 3]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text())["segments"]
    with pytest.raises(CheckpointMismatchError, match="delete the file"):
        execute(_logged_abs, [-1, -2, -4], n_jobs=1, checkpoint=Checkpoint(path))
    with pytest.raises(CheckpointMismatchError, match="another function"):
        execute(abs, [-1, -2, -3], n_jobs=1, checkpoint=Checkpoint(path))
    # resuming a finished checkpoint returns its results without calling func again
    CALLS.clear()
    assert execute(_logged_abs, [-1, -2, -3], n_jobs=1, checkpoint=Checkpoint(path)) == [1, 2, 3]
    assert CALLS == []
    assert not path.exists()  # removed after a successful run without keep


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from amorsize import execute, DeadLetterQueue, DLQPolicy, Checkpoint

    SIDE = sys.argv[1]

    def work(x):
        with open(SIDE, "a") as fh:
            fh.write(f"{x}\\n")
        time.sleep(0.003)
        if x % 7 == 0:
            raise ValueError(x)
        return x * 3

    if __name__ == "__main__":
        dlq = DeadLetterQueue(DLQPolicy(directory=sys.argv[2]))
        out = execute(work, range(int(sys.argv[4])), n_jobs=2, chunksize=10, dlq=dlq,
                      checkpoint=Checkpoint(sys.argv[3], every_items=30, every_seconds=None))
        print(repr([o if o else None for o in out]))
    """
)


def _checkpointed(path: Path) -> set:
    """Positions a checkpoint file records as finished (empty while there is none)."""
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return set()
    done = set()
    for segment in document["segments"]:
        assert segment["codec"] == "json"
        done.update(range(segment["start"], segment["start"] + len(segment["values"])))
    return done


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kill_at", [30, 300])
def test_resume_after_parent_sigkill(tmp_path, kill_at):
    n = 3000  # ~5 s of work: the kill lands mid-run, whatever the machine's load
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    side, dlq_dir, ckpt = tmp_path / "side.txt", tmp_path / "dlq", tmp_path / "run.ckpt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, str(script), str(side), str(dlq_dir), str(ckpt), str(n)]
    victim = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(_checkpointed(ckpt)) < kill_at:  # killed once a save holds kill_at items
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline, "the checkpoint never reached kill_at items"
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(30)
    saved = _checkpointed(ckpt)  # what the killed run left for the next one
    assert kill_at <= len(saved) < n
    before_resume = Counter(int(x) for x in side.read_text().split())
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stderr
    results = eval(resumed.stdout.strip().splitlines()[-1])
    expected = [None if x % 7 == 0 else x * 3 for x in range(n)]
    assert results == expected  # equal to an uninterrupted run
    runs = Counter(int(x) for x in side.read_text().split())
    assert set(runs) == set(range(n))
    assert max(runs.values()) <= 2  # at most once more than an uninterrupted run
    # The resume happened: no checkpointed position ran again.
    assert all(runs[x] == before_resume[x] == 1 for x in saved)
    entries = DeadLetterQueue(DLQPolicy(directory=str(dlq_dir))).get_entries()
    items = Counter(e.item for e in entries)
    assert sorted(items) == [x for x in range(n) if x % 7 == 0]
    assert max(items.values()) == 1  # DLQ entries are not duplicated across the resume
    assert not ckpt.exists()  # removed on success


class _Handle:
    """An item the threads backend takes as it is: it holds a lock (cannot be pickled)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()


@pytest.mark.timeout(60)
def test_checkpoint_takes_a_function_and_items_that_cannot_be_pickled(tmp_path):
    """Before the fix, the fingerprint pickled func and items: a threads run whose function
    holds a client (a lock inside) raised a bare TypeError from cloudpickle before any item."""
    path = tmp_path / "run.ckpt"
    session_lock = threading.Lock()
    calls: Counter[int] = Counter()

    def fetch(handle: _Handle) -> int:
        with session_lock:
            calls[handle.n] += 1
        return handle.n * 10

    items = [_Handle(n) for n in range(6)]
    first = execute(fetch, items, backend="threads", n_jobs=2,
                    checkpoint=Checkpoint(path, every_items=1, keep=True))
    assert first == [0, 10, 20, 30, 40, 50]
    # The same call again resumes from the file: nothing runs twice.
    again = execute(fetch, [_Handle(n) for n in range(6)], backend="threads", n_jobs=2,
                    checkpoint=Checkpoint(path, keep=True))
    assert again == first and calls == Counter(range(6))

    def other(handle: _Handle) -> int:
        with session_lock:
            return handle.n

    with pytest.raises(CheckpointMismatchError, match="another function"):
        execute(other, items, backend="threads", checkpoint=Checkpoint(path))
