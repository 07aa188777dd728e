"""`amorsize dlq replay`: recovered leave, failures stay updated, dry run, lock, rate, Ctrl-C.

The replayed functions live in a module written to tmp_path (the replay's working
directory, so ``--func fix:fixed`` resolves like ``python -m`` would). They append
to a side file, so a test knows what really ran.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from test_cli import (  # noqa: F401 (_isolated_main: the autouse fixture, here too)
    TIMEOUT,
    _isolated_main,
    cli_env,
    entry_for,
    hold_replay_lock,
    journal_ids,
    read_dlq,
    run_cli,
    run_main,
    write_dlq,
)

from amorsize import DLQEntry, DLQFormat
from amorsize.cli import replay as replay_module
from amorsize.cli.common import parse_rate

FIX_MODULE = '''
import os, sys, time

SIDE = {side!r}
CONSTANT = 42


def _note(text):
    with open(SIDE, "a") as handle:
        handle.write(text + "\\n")


def fixed(item):
    """Recovers even items; odd ones still fail, with a new error type."""
    if item % 2:
        raise LookupError(f"still odd: {{item}}")
    _note(f"done {{item}}")
    return item * 10


def flaky(item):
    """Fails the first attempt at each item, succeeds the second."""
    _note(f"try {{item}}")
    tries = open(SIDE).read().split().count(str(item))
    if tries < 2:
        raise ConnectionError(f"transient {{item}}")
    return item


def stamped(item):
    _note(f"{{time.time()!r}} {{item}}")
    return item


def slow(item):
    time.sleep(0.15)
    _note(f"done {{item}}")
    return item


def stuck_at_3(item):
    if item == 3:
        _note("start 3")
        time.sleep(60)
    _note(f"done {{item}}")
    return item


def pair(item):
    number, word = item
    _note(f"done {{number}} {{word}}")
    return word


class Parser:
    @staticmethod
    def parse(item):
        _note(f"done {{item}}")
        return item
'''


def ints(directory, count: int, fmt: DLQFormat = DLQFormat.JSON) -> List[DLQEntry]:
    """A DLQ holding the items 0..count-1, each failed once with ValueError."""
    entries = [entry_for(i, ValueError(f"bad {i}"), metadata={"source": "test"}) for i in range(count)]
    write_dlq(directory, entries, fmt)
    return entries


@pytest.fixture
def project(tmp_path) -> Path:
    """tmp_path with fix.py (and a module that fails to import); side effects go to side.txt."""
    (tmp_path / "fix.py").write_text(FIX_MODULE.format(side=str(tmp_path / "side.txt")))
    (tmp_path / "broken.py").write_text("raise RuntimeError('cannot import me')\n")
    return tmp_path


@pytest.fixture
def in_project(project, monkeypatch) -> Path:
    """For run_main: work in ``project``; its modules are imported afresh and forgotten after."""
    monkeypatch.chdir(project)
    for name in ("fix", "broken"):
        sys.modules.pop(name, None)
    yield project
    for name in ("fix", "broken"):
        sys.modules.pop(name, None)


def side(project: Path) -> List[str]:
    path = project / "side.txt"
    return path.read_text().splitlines() if path.exists() else []


def replay(project: Path, *args, timeout: float = TIMEOUT):
    return run_cli("dlq", "replay", project / "q", *args, cwd=project, timeout=timeout)


# --- outcomes ------------------------------------------------------------------------


def test_replay_removes_recovered_and_updates_the_rest(project):
    entries = ints(project / "q", 6)
    done = replay(project, "--func", "fix:fixed")
    assert done.returncode == 1, done.stderr
    assert "replayed 6 of 6 selected entries with fix:fixed" in done.stdout
    assert "recovered:     3" in done.stdout and "still failing: 3" in done.stdout
    assert "STILL FAILING" in done.stdout and "still odd: 1" in done.stdout
    assert sorted(side(project)) == ["done 0", "done 2", "done 4"]
    left = read_dlq(project / "q")
    assert [e.item for e in left] == [1, 3, 5]
    assert [e.entry_id for e in left] == [entries[i].entry_id for i in (1, 3, 5)]
    for entry in left:
        assert entry.retry_count == 1
        assert entry.error_type == "LookupError" and entry.error_message == f"still odd: {entry.item}"
        assert "fix.py" in entry.traceback and "LookupError" in entry.traceback
        assert entry.metadata["source"] == "test" and entry.metadata["last_replay_attempts"] == 1
    assert sorted(journal_ids(project / "q")) == sorted(e.entry_id for e in left)


def test_console_script_resolves_func_from_the_working_directory(project):
    ints(project / "q", 3)
    script = subprocess.run(["which", "amorsize"], capture_output=True, text=True, timeout=TIMEOUT)
    done = subprocess.run(
        [script.stdout.strip(), "dlq", "replay", str(project / "q"), "--func", "fix:Parser.parse"],
        cwd=project, env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "recovered:     3" in done.stdout
    assert read_dlq(project / "q") == []
    assert side(project) == ["done 0", "done 1", "done 2"]


def test_dry_run_calls_and_changes_nothing(project):
    ints(project / "q", 4)
    before = (project / "q" / "dlq.jsonl").read_bytes()
    done = replay(project, "--func", "fix:fixed", "--dry-run", "--error-type", "ValueError")
    assert done.returncode == 0, done.stderr
    assert "would replay 4 of 4 entries with fix:fixed" in done.stdout
    assert "nothing was called or changed" in done.stdout
    assert (project / "q" / "dlq.jsonl").read_bytes() == before
    assert not (project / "side.txt").exists()
    assert not (project / "q" / ".replay.lock").exists()


def test_replay_only_the_filtered_entries(project):
    entries = ints(project / "q", 4)
    write_dlq(project / "q", [entry_for(10, KeyError("k"))])
    done = replay(project, "--func", "fix:fixed", "--error-type", "KeyError")
    assert done.returncode == 0, done.stderr
    assert side(project) == ["done 10"]
    assert [e.entry_id for e in read_dlq(project / "q")] == [e.entry_id for e in entries]
    done = replay(project, "--func", "fix:fixed", "--grep", "bad 2", "--limit", "1")
    assert done.returncode == 0 and side(project) == ["done 10", "done 2"]
    done = replay(project, "--func", "fix:fixed", "--grep", "no such text")
    assert done.returncode == 0 and "nothing to replay" in done.stdout


def test_retries_within_one_replay(project):
    ints(project / "q", 2)
    done = replay(project, "--func", "fix:flaky", "--retries", "1")
    assert done.returncode == 0, done.stderr
    assert side(project) == ["try 0", "try 0", "try 1", "try 1"]
    assert read_dlq(project / "q") == []


def test_pickled_items_replay_with_allow_pickle(project):
    write_dlq(project / "q", [entry_for((1, "one"), ValueError("x")),
                              entry_for((2, "two"), ValueError("y"))], DLQFormat.PICKLE)
    before = (project / "q" / "dlq.jsonl").read_bytes()
    done = replay(project, "--func", "fix:pair")
    assert done.returncode == 2 and "--allow-pickle" in done.stderr
    assert (project / "q" / "dlq.jsonl").read_bytes() == before and side(project) == []
    done = replay(project, "--func", "fix:pair", "--allow-pickle")
    assert done.returncode == 0, done.stderr
    assert side(project) == ["done 1 one", "done 2 two"]


def test_pickled_metadata_is_refused_too(in_project, capsys):
    # A JSON item whose metadata holds a tuple: the metadata is stored pickled.
    project = in_project
    write_dlq(project / "q", [entry_for(2, ValueError("x"), metadata={"where": (1, 2)})])
    code, _, err = run_main(capsys, "dlq", "replay", project / "q", "--func", "fix:fixed")
    assert code == 2 and "--allow-pickle" in err
    assert side(project) == []


# --- bad --func and --rate ---------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("fix", "expected module:function"),
    ("fix:", "expected module:function"),
    (":fixed", "expected module:function"),
    ("fix:Parser.", "expected module:function"),
    ("nosuchmodule:f", "no module named 'nosuchmodule'"),
    ("fix:nope", "fix has no attribute 'nope'"),
    ("fix:Parser.nope", "fix:Parser has no attribute 'nope'"),
    ("fix:CONSTANT", "is a int, not a callable"),
    ("broken:f", "importing broken failed"),
])
def test_bad_func_is_a_usage_error(in_project, capsys, spec, message):
    project = in_project
    ints(project / "q", 2)
    before = (project / "q" / "dlq.jsonl").read_bytes()
    code, _, err = run_main(capsys, "dlq", "replay", project / "q", "--func", spec)
    assert code == 2, err
    assert message in err
    assert (project / "q" / "dlq.jsonl").read_bytes() == before


def test_bad_func_from_the_real_script(project):
    ints(project / "q", 1)
    done = replay(project, "--func", "broken:f")
    assert done.returncode == 2
    assert "importing broken failed" in done.stderr and "cannot import me" in done.stderr


@pytest.mark.parametrize("text, value", [("10/s", 10.0), ("10", 10.0), ("0.5/s", 0.5), (".5", 0.5)])
def test_rate_accepted(text, value):
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["fast", "10/m", "0", "0/s", "-1/s", "1e3", "10 /s", ""])
def test_rate_rejected_with_exit_2(tmp_path, capsys, text):
    ints(tmp_path / "q", 1)
    code, _, err = run_main(capsys, "dlq", "replay", tmp_path / "q", "--func", "json:dumps",
                            f"--rate={text}", "--dry-run")
    assert code == 2 and "is not a rate" in err


def test_rate_spaces_item_starts(project):
    ints(project / "q", 5)
    done = replay(project, "--func", "fix:stamped", "--rate", "20/s")
    assert done.returncode == 0, done.stderr
    stamps = [float(line.split()[0]) for line in side(project)]
    assert len(stamps) == 5
    assert stamps[-1] - stamps[0] >= 4 * 0.05 * 0.9  # 5 starts, 1/20 s apart


def test_token_bucket_with_a_fake_clock():
    now = [100.0]
    waits: List[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    bucket = replay_module.TokenBucket(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        bucket.acquire()
    assert waits == [0.25, 0.25, 0.25, 0.25]  # the first start is free, then 1/4 s apart
    now[0] += 10  # idle time does not build up a burst beyond one start
    bucket.acquire()
    bucket.acquire()
    assert waits[-1] == pytest.approx(0.25)


# --- one replay at a time, Ctrl-C ------------------------------------------------------------


def test_a_second_replay_is_refused_while_one_holds_the_lock(project):
    ints(project / "q", 3)
    before = (project / "q" / "dlq.jsonl").read_bytes()
    fd = hold_replay_lock(project / "q")
    try:
        done = replay(project, "--func", "fix:fixed")
    finally:
        os.close(fd)
    assert done.returncode == 4
    assert "another replay or purge is running on" in done.stderr
    assert (project / "q" / "dlq.jsonl").read_bytes() == before and side(project) == []
    assert replay(project, "--func", "fix:fixed").returncode == 1  # released: runs


def start_replay(project: Path, func: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "amorsize", "dlq", "replay", str(project / "q"), "--func", func,
         *extra],
        cwd=project, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_stderr_until(proc: subprocess.Popen, text: str, timeout: float = 20.0) -> str:
    """Read ``proc``'s stderr (a text pipe) until ``text`` appears; return what was read."""
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    seen = b""
    while text.encode() not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {text!r} on stderr: {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"stderr closed before {text!r}: {seen!r}"
            seen += chunk
    return seen.decode()


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum, code, n_jobs",
                         [(signal.SIGINT, 130, "1"), (signal.SIGTERM, 143, "1"),
                          (signal.SIGINT, 130, "2")],
                         ids=["SIGINT", "SIGTERM", "SIGINT-workers"])
def test_interrupt_commits_what_finished_and_touches_nothing_else(project, signum, code, n_jobs):
    entries = ints(project / "q", 30)
    proc = start_replay(project, "fix:slow", "--n-jobs", n_jobs)
    try:
        wait_for(lambda: len(side(project)) >= 3)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert proc.returncode == code, err
    assert "interrupted" in err and "interrupted:" in out
    ran = side(project)
    assert len(ran) == len(set(ran)) and 3 <= len(ran) < 30
    ran_items = {int(line.split()[1]) for line in ran}
    left = read_dlq(project / "q")
    ids_on_disk = journal_ids(project / "q")
    assert len(ids_on_disk) == len(set(ids_on_disk)) == len(left)  # nothing duplicated
    by_id = {e.entry_id: e for e in left}
    for original in entries:
        if original.item in ran_items:
            assert original.entry_id not in by_id  # it ran, so it left the DLQ
        else:
            assert by_id[original.entry_id] == original  # untouched, present once
    assert f"recovered:     {len(ran_items)}" in out


def test_a_second_ctrl_c_stops_at_once(project):
    entries = ints(project / "q", 6)
    proc = start_replay(project, "fix:stuck_at_3")
    try:
        wait_for(lambda: "start 3" in side(project))
        proc.send_signal(signal.SIGINT)
        # The second Ctrl-C only once the first was handled (its message is on stderr):
        # two signals close together could be seen as one.
        first = read_stderr_until(proc, "interrupted:")
        assert proc.poll() is None  # the first Ctrl-C waits for item 3 to finish
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=10)
        err = first + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert proc.returncode == 130, err
    assert side(project) == ["done 0", "done 1", "done 2", "start 3"]
    left = read_dlq(project / "q")
    assert left == entries[3:]  # item 3 was cut off: it stays exactly as it was
    assert journal_ids(project / "q") == [e.entry_id for e in entries[3:]]


# --- the seam for execute(), and a failed commit (in process) -------------------------------------


def _half_in_worker(item):
    if item % 2:
        raise ValueError(f"odd {item}")
    return item // 2, os.getpid()


@pytest.mark.timeout(60)
def test_run_items_goes_through_worker_processes():
    outcomes = list(replay_module._run_items(_half_in_worker, [0, 1, 2], n_jobs=2, retries=1,
                                             rate=None))
    assert [o[0] for o in outcomes] == [True, False, True]
    assert outcomes[0][1][0] == 0 and outcomes[2][1][0] == 1
    assert {outcomes[0][1][1], outcomes[2][1][1]}.isdisjoint({os.getpid()})  # ran in workers
    _, info = outcomes[1]
    assert info.error_type == "ValueError" and info.error_message == "odd 1"
    assert info.attempts == 2 and "odd 1" in info.traceback
    # A stop request ends the input: results come back for a prefix only.
    stop_after = iter([False, False, True])
    outcomes = list(replay_module._run_items(_half_in_worker, [0, 2, 4, 6], n_jobs=2, retries=0,
                                             rate=None, stop=lambda: next(stop_after, True)))
    assert [value[0] for _, value in outcomes] == [0, 1]
    # --n-jobs 1 and --rate stay serial, in this process.
    assert list(replay_module._run_items(_half_in_worker, [2], n_jobs=1, retries=0,
                                         rate=None)) == [(True, (1, os.getpid()))]
    assert list(replay_module._run_items(_half_in_worker, [2], n_jobs=3, retries=0,
                                         rate=1000.0)) == [(True, (1, os.getpid()))]


def test_a_failed_commit_exits_3_and_changes_nothing(tmp_path, capsys, monkeypatch):
    ints(tmp_path / "q", 3)
    before = (tmp_path / "q" / "dlq.jsonl").read_bytes()

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("amorsize.dlq.journal.Journal.compact", disk_full)
    code, _, err = run_main(capsys, "dlq", "purge", tmp_path / "q", "--yes")
    assert code == 3 and "was not changed" in err
    code, _, err = run_main(capsys, "dlq", "replay", tmp_path / "q", "--func", "json:dumps")
    assert code == 3 and "was not changed" in err
    assert (tmp_path / "q" / "dlq.jsonl").read_bytes() == before
    assert json.loads(run_main(capsys, "dlq", "summary", tmp_path / "q", "--json")[1])[
        "total_entries"] == 3


