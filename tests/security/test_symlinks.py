"""No symlink is followed (issue 13, "Deliver" 3).

A symlink planted where the journal, its lock, the replay lock, a checkpoint or
an export target goes must never become a way to read or write another file: it
is refused with an error naming it, and the file it points at stays untouched
(and, for a dangling link, is never created).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest

from amorsize import AmorsizeError, Checkpoint, DeadLetterQueue, DLQError, DLQPolicy, execute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VICTIM_TEXT = "precious: must never change\n"


@pytest.fixture
def victim(tmp_path: Any) -> str:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return str(path)


def make_dlq(directory: str, n: int = 3) -> List[str]:
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    ids = [queue.add({"n": i}, ValueError(f"bad {i}")).entry_id for i in range(n)]
    queue.close()
    return ids


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amorsize", *args], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def exercise(directory: str) -> None:
    """Open, add, remove (a compaction) and close a queue on ``directory``."""
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    entry = queue.add("item", ValueError("boom"))
    queue.flush()
    queue.remove([entry.entry_id])
    queue.close()


def expect_refusal(directory: str, link: str) -> None:
    with pytest.raises(DLQError) as info:
        exercise(directory)
    assert link in str(info.value) or os.path.basename(link) in str(info.value)
    assert "symlink" in str(info.value).lower() or "symbolic link" in str(info.value).lower()


# --- the journal and its lock ---------------------------------------------------


@pytest.mark.parametrize("name", ["dlq.jsonl", ".dlq.lock"])
def test_symlink_to_an_existing_file_is_refused_and_the_file_untouched(tmp_path, victim, name):
    """Why: a planted dlq.jsonl symlink: the victim was rewritten or appended to."""
    directory = str(tmp_path / "dlq")
    os.mkdir(directory, 0o700)
    link = os.path.join(directory, name)
    os.symlink(victim, link)
    try:
        expect_refusal(directory, link)
    finally:
        with open(victim) as handle:
            assert handle.read() == VICTIM_TEXT
    assert os.path.islink(link), "the planted link was silently replaced instead of refused"


@pytest.mark.parametrize("name", ["dlq.jsonl", ".dlq.lock"])
def test_dangling_symlink_is_refused_and_its_target_never_created(tmp_path, name):
    directory = str(tmp_path / "dlq")
    os.mkdir(directory, 0o700)
    target = str(tmp_path / "created-through-the-link")
    link = os.path.join(directory, name)
    os.symlink(target, link)
    try:
        expect_refusal(directory, link)
    finally:
        assert not os.path.exists(target), "a file was created through the planted symlink"


def test_a_journal_that_is_a_symlink_to_another_journal_is_refused(tmp_path):
    """Reading through the link is following it too, even when the target is a journal."""
    other = str(tmp_path / "other")
    make_dlq(other)
    before = Path(other, "dlq.jsonl").read_bytes()
    directory = str(tmp_path / "dlq")
    os.mkdir(directory, 0o700)
    link = os.path.join(directory, "dlq.jsonl")
    os.symlink(os.path.join(other, "dlq.jsonl"), link)
    with pytest.raises(DLQError) as info:
        DeadLetterQueue(DLQPolicy(directory=directory))
    assert "dlq.jsonl" in str(info.value)
    assert Path(other, "dlq.jsonl").read_bytes() == before


# --- the CLI: replay lock and export target ------------------------------------------


@pytest.mark.timeout(120)
def test_replay_lock_symlink_is_refused_by_purge(tmp_path, victim):
    """Why: `amorsize dlq purge --yes` overwrote the victim with "<pid> purge"."""
    directory = str(tmp_path / "dlq")
    ids = make_dlq(directory)
    link = os.path.join(directory, ".replay.lock")
    os.symlink(victim, link)
    done = run_cli("dlq", "purge", directory, "--yes")
    with open(victim) as handle:
        assert handle.read() == VICTIM_TEXT, "purge wrote through the .replay.lock symlink"
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert ".replay.lock" in done.stderr and "Traceback" not in done.stderr
    reopened = DeadLetterQueue(DLQPolicy(directory=directory))
    assert [e.entry_id for e in reopened.get_entries()] == ids, "purge went ahead anyway"
    reopened.close()


@pytest.mark.timeout(120)
def test_dangling_replay_lock_symlink_creates_nothing(tmp_path):
    directory = str(tmp_path / "dlq")
    make_dlq(directory)
    target = str(tmp_path / "created-by-purge")
    os.symlink(target, os.path.join(directory, ".replay.lock"))
    done = run_cli("dlq", "purge", directory, "--yes")
    assert not os.path.exists(target), "purge created a file through the .replay.lock symlink"
    assert done.returncode == 3, (done.returncode, done.stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_export_to_a_symlink_is_refused(tmp_path, victim, suffix):
    directory = str(tmp_path / "dlq")
    make_dlq(directory)
    link = str(tmp_path / f"out{suffix}")
    os.symlink(victim, link)
    done = run_cli("dlq", "export", directory, "--to", link)
    with open(victim) as handle:
        assert handle.read() == VICTIM_TEXT
    assert done.returncode != 0, "export replaced a planted symlink instead of refusing it"
    assert link in done.stderr and "Traceback" not in done.stderr
    assert os.path.islink(link)


# --- checkpoints -----------------------------------------------------------------------


def double(x: int) -> int:
    return 2 * x


def test_checkpoint_symlink_is_refused_before_any_call(tmp_path):
    """A checkpoint read through a symlink is a file someone else chose; refuse it."""
    real = str(tmp_path / "real.ckpt")
    execute(double, range(10), n_jobs=1, checkpoint=Checkpoint(real, every_items=1, keep=True))
    assert os.path.exists(real)
    before = Path(real).read_bytes()
    link = str(tmp_path / "run.ckpt")
    os.symlink(real, link)
    with pytest.raises(AmorsizeError) as info:
        execute(double, range(10), n_jobs=1, checkpoint=Checkpoint(link, keep=True))
    assert link in str(info.value) and "symlink" in str(info.value).lower()
    assert Path(real).read_bytes() == before
    assert os.path.islink(link)


def test_dangling_checkpoint_symlink_creates_nothing(tmp_path):
    target = str(tmp_path / "created-by-checkpoint")
    link = str(tmp_path / "run.ckpt")
    os.symlink(target, link)
    try:
        execute(double, range(10), n_jobs=1, checkpoint=Checkpoint(link, every_items=1, keep=True))
    except AmorsizeError as exc:
        assert link in str(exc)
    assert not os.path.exists(target), "a checkpoint was written through the planted symlink"
