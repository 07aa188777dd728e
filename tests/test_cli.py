"""The `amorsize` console script: summary, list, show, export, purge (run as real processes).

Every command runs as ``python -m amorsize`` with this worktree first on PYTHONPATH,
against DLQs the library wrote, in both formats. tests/test_cli_replay.py imports
the helpers below.
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from amorsize import DeadLetterQueue, DLQEntry, DLQFormat, DLQPolicy

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30  # seconds, for every subprocess
T0 = datetime.datetime(2024, 5, 1, 1, 0, tzinfo=datetime.timezone.utc).timestamp()
HOUR = 3600.0


# --- helpers (also used by test_cli_replay.py) -------------------------------------


def cli_env(columns: int = 120) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = str(columns)
    env.pop("PYTHONWARNINGS", None)
    return env


def run_cli(*args, cwd=None, columns: int = 120, timeout: float = TIMEOUT):
    """Run ``python -m amorsize ARGS`` and return the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "amorsize", *map(str, args)],
        cwd=cwd, env=cli_env(columns), capture_output=True, text=True, timeout=timeout,
    )


def run_main(capsys, *args) -> Tuple[int, str, str]:
    """The same command line in this process: ``(exit code, stdout, stderr)``.

    For the wide matrices (filters, bad values); every feature also runs once
    through a real process above or below.
    """
    from amorsize.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _isolated_main(monkeypatch):
    """For run_main: a known width, and sys.path restored (--func adds the cwd to it)."""
    monkeypatch.setenv("COLUMNS", "120")  # subprocesses get it from cli_env
    monkeypatch.setattr(sys, "path", list(sys.path))


def entry_for(item, error: BaseException, *, timestamp=None, reason="exception", retry_count=0,
              metadata=None) -> DLQEntry:
    """An entry from a raised ``error`` (so it has a real traceback)."""
    try:
        raise error
    except BaseException as exc:
        entry = DLQEntry.from_exception(item, exc, reason=reason, retry_count=retry_count,
                                        metadata=metadata)
    if timestamp is not None:
        entry.timestamp = timestamp
    return entry


def write_dlq(directory, entries: List[DLQEntry], fmt: DLQFormat = DLQFormat.JSON) -> Path:
    queue = DeadLetterQueue(DLQPolicy(directory=directory, format=fmt, max_entries=0))
    queue.extend(entries)
    queue.close()
    return Path(directory)


def read_dlq(directory, allow_pickle: bool = False) -> List[DLQEntry]:
    return DeadLetterQueue(
        DLQPolicy(directory=directory, max_entries=0, allow_pickle=allow_pickle)
    ).get_entries()


def journal_ids(directory) -> List[str]:
    """The entry id of every line on disk (to prove nothing is duplicated)."""
    path = Path(directory) / "dlq.jsonl"
    return [json.loads(line)["entry_id"] for line in path.read_text().splitlines() if line.strip()]


def json_lines(text: str) -> List[dict]:
    return [json.loads(line) for line in text.splitlines()]


class ParseError(Exception):
    pass


@pytest.fixture(params=[DLQFormat.JSON, DLQFormat.PICKLE], ids=["json", "pickle"])
def fmt(request) -> DLQFormat:
    return request.param


def sample(directory, fmt: DLQFormat = DLQFormat.JSON) -> Dict[str, DLQEntry]:
    """Five entries an hour apart from T0: e4's item is a tuple (pickled in both formats)."""
    entries = {
        "e1": entry_for({"id": 1, "amount": "12x"}, ValueError("invalid amount '12x'"),
                        timestamp=T0),
        "e2": entry_for({"amount": "3"}, KeyError("id"), timestamp=T0 + HOUR),
        "e3": entry_for("row-3", ParseError("bad row 3"), timestamp=T0 + 2 * HOUR,
                        reason="timeout", metadata={"attempts": 1}),
        "e4": entry_for((4, "tuple"), TypeError("expected a dict"), timestamp=T0 + 3 * HOUR,
                        retry_count=2),
        "e5": entry_for({"id": 5}, ValueError("a needle in the message"), timestamp=T0 + 4 * HOUR),
    }
    write_dlq(directory, list(entries.values()), fmt)
    return entries


def common_prefix(strings: List[str]) -> str:
    first, last = min(strings), max(strings)
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    return first[:size]


def ids_of(text: str) -> List[str]:
    return [record["entry_id"] for record in json_lines(text)]


# --- the entry point ----------------------------------------------------------------


def test_console_script_is_installed_and_runs(tmp_path):
    script = shutil.which("amorsize")
    assert script, "the amorsize console script is not on PATH"
    done = subprocess.run([script, "--help"], env=cli_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dlq" in done.stdout and "exit codes" in done.stdout
    done = subprocess.run([script, "dlq", "replay", "--help"], env=cli_env(), capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--allow-pickle" in done.stdout and "4    another replay or purge" in done.stdout


def test_python_m_amorsize_usage():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("amorsize ")
    assert run_cli().returncode == 2
    done = run_cli("dlq")
    assert done.returncode == 2 and "summary" in done.stderr
    assert run_cli("dlq", "frobnicate", ".").returncode == 2


# --- summary, empty and missing directories, corruption -------------------------------


def test_summary_both_formats(tmp_path, capsys, fmt):
    sample(tmp_path / "q", fmt)
    done = run_cli("dlq", "summary", tmp_path / "q")
    assert done.returncode == 0, done.stderr
    assert "entries:        5" in done.stdout
    assert "ValueError 2" in done.stdout and "timeout 1" in done.stdout
    assert "2024-05-01T01:00:00Z" in done.stdout and "--allow-pickle" in done.stdout
    summary = json.loads(run_main(capsys, "dlq", "summary", tmp_path / "q", "--json")[1])
    assert summary["total_entries"] == 5
    assert summary["error_types"] == {"ValueError": 2, "KeyError": 1, "ParseError": 1,
                                      "TypeError": 1}
    assert summary["pickled_not_loaded"] == (5 if fmt is DLQFormat.PICKLE else 1)
    assert summary["oldest_time"] == "2024-05-01T01:00:00Z"
    loaded = json.loads(run_main(capsys, "dlq", "summary", tmp_path / "q", "--json", "--allow-pickle")[1])
    assert loaded["pickled_not_loaded"] == 0


def test_empty_directory_is_an_empty_dlq(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli("dlq", "summary", empty)
    assert done.returncode == 0 and "entries:        0" in done.stdout
    assert json.loads(run_main(capsys, "dlq", "summary", empty, "--json")[1])["total_entries"] == 0
    assert run_main(capsys, "dlq", "list", empty) == (0, "the DLQ is empty\n", "")
    assert run_main(capsys, "dlq", "list", empty, "--json") == (0, "", "")
    assert run_main(capsys, "dlq", "export", empty, "--to", tmp_path / "e.jsonl")[0] == 0
    assert (tmp_path / "e.jsonl").read_text() == ""
    assert os.listdir(empty) == []  # read commands create nothing


MISSING_DIR_COMMANDS = [
    ["summary"], ["list"], ["show", "abcd"], ["export", "--to", "out.jsonl"], ["purge", "--yes"],
    ["replay", "--func", "json:dumps"], ["replay", "--func", "json:dumps", "--dry-run"],
]


def test_missing_directory_exits_3_and_creates_nothing(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.chdir(tmp_path)
    for command in MISSING_DIR_COMMANDS:
        code, _, err = run_main(capsys, "dlq", command[0], missing, *command[1:])
        assert code == 3, (command, err)
        assert f"no DLQ at {missing}" in err
    done = run_cli("dlq", "summary", missing)
    assert done.returncode == 3 and f"no DLQ at {missing}: the directory does not exist" in done.stderr
    assert os.listdir(tmp_path) == []  # nothing created: no directory, no export file
    (tmp_path / "file").write_text("")
    code, _, err = run_main(capsys, "dlq", "list", tmp_path / "file")
    assert code == 3 and "not a directory" in err


def test_corrupt_journal_names_file_and_line(tmp_path, capsys):
    queue_dir = tmp_path / "q"
    sample(queue_dir)
    journal = queue_dir / "dlq.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = b"this is not json\n"
    journal.write_bytes(b"".join(lines))
    before = journal.read_bytes()
    done = run_cli("dlq", "summary", queue_dir)
    assert done.returncode == 3, done.stderr
    assert f"corrupt DLQ: {journal}, line 2" in done.stderr and "--no-strict" in done.stderr
    for command in (["list"], ["show", "0"], ["export", "--to", tmp_path / "x.csv"], ["purge"],
                    ["replay", "--func", "json:dumps", "--dry-run"]):
        code, _, err = run_main(capsys, "dlq", command[0], queue_dir, *command[1:])
        assert code == 3, (command, err)
        assert f"{journal}, line 2" in err
    done = run_cli("dlq", "summary", queue_dir, "--no-strict")
    assert done.returncode == 0, done.stderr
    assert "entries:        4" in done.stdout and "corrupt records skipped: 1" in done.stdout
    # Rewriting the file would drop the unreadable record for good: refused.
    for command in (["purge", "--yes"], ["replay", "--func", "json:dumps"]):
        code, _, err = run_main(capsys, "dlq", command[0], queue_dir, "--no-strict", *command[1:])
        assert code == 3 and "refused" in err, err
    assert journal.read_bytes() == before
    assert not (tmp_path / "x.csv").exists()


def test_torn_last_record_is_a_warning(tmp_path):
    sample(tmp_path / "q")
    with open(tmp_path / "q" / "dlq.jsonl", "ab") as handle:
        handle.write(b'{"entry_id":"abc","v":1,"err')
    done = run_cli("dlq", "summary", tmp_path / "q")
    assert done.returncode == 0, done.stderr
    assert "entries:        5" in done.stdout and "amorsize: warning:" in done.stderr


# --- list -------------------------------------------------------------------------


def test_list_filters(tmp_path, capsys):
    e = sample(tmp_path / "q")
    q = tmp_path / "q"
    names = {entry.entry_id: name for name, entry in e.items()}

    def listed(*filters) -> List[str]:
        code, out, err = run_main(capsys, "dlq", "list", q, "--json", *filters)
        assert code == 0, err
        return [names[i] for i in ids_of(out)]

    assert listed() == ["e1", "e2", "e3", "e4", "e5"]
    assert listed("--error-type", "ValueError") == ["e1", "e5"]
    assert listed("--error-type", e["e3"].error_qualname) == ["e3"]
    assert listed("--reason", "timeout") == ["e3"]
    assert listed("--since", "2024-05-01T02:30:00Z") == ["e3", "e4", "e5"]
    assert listed("--until", "2024-05-01 02:30") == ["e1", "e2"]  # no offset: UTC
    assert listed("--since", "2024-05-01T04:00:00+02:00", "--until", "2024-05-01T03:00:00Z") == [
        "e2", "e3"]  # inclusive bounds, any offset
    assert listed("--since", "1d") == []  # an age; the sample is from 2024
    assert listed("--until", "90s") == ["e1", "e2", "e3", "e4", "e5"]
    assert listed("--grep", "needle") == ["e5"]
    assert listed("--grep", "NEEDLE") == []
    assert listed("--grep", "NEEDLE", "-i") == ["e5"]
    assert listed("--grep", '"amount": "3"') == ["e2"]  # in the item
    assert listed("--grep", "'tuple'") == ["e4"]  # in a pickled item's stored repr
    assert listed("--grep", "raise error") == ["e1", "e2", "e3", "e4", "e5"]  # in the traceback
    assert listed("--limit", "2") == ["e1", "e2"]
    assert listed("--error-type", "ValueError", "--limit", "1") == ["e1"]
    # The same through the real console script, filters combined.
    done = run_cli("dlq", "list", q, "--json", "--error-type", "ValueError", "--since",
                   "2024-05-01T02:00:00Z", "--grep", "needle", "--limit", "5")
    assert done.returncode == 0, done.stderr
    assert ids_of(done.stdout) == [e["e5"].entry_id]


@pytest.mark.parametrize("bad", [
    ["--reason", "nope"], ["--since", "yesterday"], ["--until", "2024-13-01"], ["--limit", "0"],
    ["--limit", "x"],
])
def test_list_bad_values_exit_2(tmp_path, capsys, bad):
    sample(tmp_path / "q")
    code, _, err = run_main(capsys, "dlq", "list", tmp_path / "q", *bad)
    assert code == 2
    assert "usage:" in err


def test_a_bad_value_exits_2_from_the_real_script(tmp_path):
    sample(tmp_path / "q")
    done = run_cli("dlq", "list", tmp_path / "q", "--since", "yesterday")
    assert done.returncode == 2
    assert "is not an ISO 8601 time" in done.stderr and done.stdout == ""


def test_list_json_items_as_stored(tmp_path, fmt):
    e = sample(tmp_path / "q", fmt)
    records = {r["entry_id"]: r for r in json_lines(run_cli("dlq", "list", tmp_path / "q", "--json").stdout)}
    tuple_item = records[e["e4"].entry_id]
    assert tuple_item["item"] == {"codec": "cloudpickle", "repr": "(4, 'tuple')"}
    assert tuple_item["item_codec"] == "cloudpickle" and tuple_item["retry_count"] == 2
    first = records[e["e1"].entry_id]
    if fmt is DLQFormat.JSON:
        assert first["item"] == {"id": 1, "amount": "12x"} and first["item_codec"] == "json"
    else:
        assert first["item"] == {"codec": "cloudpickle", "repr": "{'amount': '12x', 'id': 1}"}
    assert first["time"] == "2024-05-01T01:00:00.000Z" and first["timestamp"] == T0
    assert first["error_type"] == "ValueError" and "Traceback" in first["traceback"]
    loaded = json_lines(run_cli("dlq", "list", tmp_path / "q", "--json", "--allow-pickle").stdout)
    assert loaded[0]["item"] == {"id": 1, "amount": "12x"}
    assert loaded[2]["metadata"] == {"attempts": 1}


def test_list_table_fits_the_terminal(tmp_path):
    e = sample(tmp_path / "q")
    narrow = run_cli("dlq", "list", tmp_path / "q", columns=80)
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    # At 80 columns REASON and RETRIES give way, so that MESSAGE and ITEM keep some room.
    assert lines[0].split() == ["ID", "TIME", "(UTC)", "ERROR", "MESSAGE", "ITEM"]
    assert all(len(line) <= 80 for line in lines), narrow.stdout
    assert lines[-1] == "5 of 5 entries"
    for line, entry in zip(lines[1:6], e.values()):
        assert entry.entry_id.startswith(line.split()[0])
        assert "2024-05-01T0" in line
    wide = run_cli("dlq", "list", tmp_path / "q", columns=200).stdout
    assert wide.splitlines()[0].split() == ["ID", "TIME", "(UTC)", "REASON", "ERROR", "RETRIES",
                                            "MESSAGE", "ITEM"]
    assert "timeout" in wide
    assert "a needle in the message" in wide and "[pickled] (4, 'tuple')" in wide


def test_list_escapes_terminal_control_characters(tmp_path):
    write_dlq(tmp_path / "q", [entry_for("x", ValueError("\x1b[2J\x1b[31mred\nline two"))])
    done = run_cli("dlq", "list", tmp_path / "q", columns=200)
    assert "\x1b" not in done.stdout
    assert "\\x1b[2J\\x1b[31mred\\nline two" in done.stdout
    shown = run_cli("dlq", "show", tmp_path / "q", journal_ids(tmp_path / "q")[0]).stdout
    assert "\x1b" not in shown and "\\x1b[31mred" in shown


# --- show --------------------------------------------------------------------------


def test_show_by_id_and_unique_prefix(tmp_path):
    e = sample(tmp_path / "q")
    q = tmp_path / "q"
    full = run_cli("dlq", "show", q, e["e1"].entry_id)
    assert full.returncode == 0, full.stderr
    assert "invalid amount '12x'" in full.stdout and "Traceback (most recent call last)" in full.stdout
    assert "time (UTC):   2024-05-01T01:00:00.000000Z" in full.stdout
    ids = sorted(x.entry_id for x in e.values())
    me = e["e3"].entry_id
    longest_shared = max(len(common_prefix([me, other])) for other in ids if other != me)
    prefix = me[: longest_shared + 1]
    done = run_cli("dlq", "show", q, prefix.upper())
    assert done.returncode == 0, done.stderr
    assert "ParseError" in done.stdout and "reason:       timeout" in done.stdout
    record = json.loads(run_cli("dlq", "show", q, prefix, "--json").stdout)
    assert record["entry_id"] == me and record["item"] == "row-3"
    shared = common_prefix(ids)
    if shared:  # ids minted within ~4 s share their first hex digits
        done = run_cli("dlq", "show", q, shared)
        assert done.returncode == 2 and "is the start of 5 entry ids" in done.stderr
    done = run_cli("dlq", "show", q, "ffffffffff")
    assert done.returncode == 2 and "no entry" in done.stderr


def test_show_pickled_item_without_allow_pickle(tmp_path):
    e = sample(tmp_path / "q")
    shown = run_cli("dlq", "show", tmp_path / "q", e["e4"].entry_id).stdout
    assert "(4, 'tuple')" in shown and "--allow-pickle" in shown
    loaded = run_cli("dlq", "show", tmp_path / "q", e["e4"].entry_id, "--allow-pickle").stdout
    assert "item:         (4, 'tuple')" in loaded


# --- export ------------------------------------------------------------------------


def test_export_jsonl_and_csv(tmp_path):
    e = sample(tmp_path / "q")
    out = tmp_path / "out.jsonl"
    done = run_cli("dlq", "export", tmp_path / "q", "--to", out)
    assert done.returncode == 0, done.stderr
    assert "exported 5 of 5 entries" in done.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    records = json_lines(out.read_text())
    assert [r["entry_id"] for r in records] == [x.entry_id for x in e.values()]
    assert records[0]["item"] == {"id": 1, "amount": "12x"}

    table = tmp_path / "out.csv"
    table.write_text("old")
    table.chmod(0o644)
    done = run_cli("dlq", "export", tmp_path / "q", "--to", table, "--error-type", "ValueError")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["entry_id"] for r in rows] == [e["e1"].entry_id, e["e5"].entry_id]
    assert json.loads(rows[0]["item"]) == {"id": 1, "amount": "12x"}
    assert rows[0]["time"] == "2024-05-01T01:00:00.000Z" and rows[0]["retry_count"] == "0"
    assert rows[1]["error_message"] == "a needle in the message"
    assert "Traceback" in rows[0]["traceback"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".amorsize-export-")]


def test_export_bad_extension_is_a_usage_error(tmp_path):
    sample(tmp_path / "q")
    done = run_cli("dlq", "export", tmp_path / "q", "--to", tmp_path / "out.txt")
    assert done.returncode == 2 and ".jsonl or .csv" in done.stderr
    assert not (tmp_path / "out.txt").exists()
    done = run_cli("dlq", "export", tmp_path / "q", "--to", tmp_path / "no" / "dir.csv")
    assert done.returncode == 2 and "cannot write" in done.stderr


def test_export_csv_defuses_spreadsheet_formulas(tmp_path):
    write_dlq(tmp_path / "q", [entry_for("x", ValueError("=HYPERLINK(\"http://evil\")")),
                               entry_for("y", ValueError("-12.5"))])
    run_cli("dlq", "export", tmp_path / "q", "--to", tmp_path / "o.csv")
    with open(tmp_path / "o.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["error_message"] == "'=HYPERLINK(\"http://evil\")"
    assert rows[1]["error_message"] == "-12.5"


# --- purge -------------------------------------------------------------------------


def test_purge_shows_without_yes_and_removes_with_yes(tmp_path):
    e = sample(tmp_path / "q")
    q = tmp_path / "q"
    before = (q / "dlq.jsonl").read_bytes()
    done = run_cli("dlq", "purge", q, "--error-type", "ValueError")
    assert done.returncode == 0, done.stderr
    assert "would remove 2 of 5 entries" in done.stdout and "add --yes" in done.stdout
    assert (q / "dlq.jsonl").read_bytes() == before
    done = run_cli("dlq", "purge", q, "--error-type", "ValueError", "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed 2 of 5 entries; 3 left" in done.stdout
    assert journal_ids(q) == [e[n].entry_id for n in ("e2", "e3", "e4")]
    assert stat.S_IMODE((q / "dlq.jsonl").stat().st_mode) == 0o600
    done = run_cli("dlq", "purge", q, "--grep", "nothing matches this", "--yes")
    assert done.returncode == 0 and "removed 0 of 3" in done.stdout


def hold_replay_lock(directory):
    """Take <DIR>/.replay.lock as a running replay would; close the returned fd to release."""
    fd = os.open(os.path.join(directory, ".replay.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_purge_refused_while_a_replay_holds_the_lock(tmp_path):
    sample(tmp_path / "q")
    before = (tmp_path / "q" / "dlq.jsonl").read_bytes()
    fd = hold_replay_lock(tmp_path / "q")
    try:
        done = run_cli("dlq", "purge", tmp_path / "q", "--yes")
    finally:
        os.close(fd)
    assert done.returncode == 4 and "another replay or purge is running" in done.stderr
    assert (tmp_path / "q" / "dlq.jsonl").read_bytes() == before


# --- pickled items -------------------------------------------------------------------


def test_pickled_items_list_by_repr_and_replay_refuses(tmp_path):
    sample(tmp_path / "q", DLQFormat.PICKLE)
    q = tmp_path / "q"
    before = (q / "dlq.jsonl").read_bytes()
    done = run_cli("dlq", "list", q, columns=200)
    assert done.returncode == 0, done.stderr
    assert "[pickled] {'amount': '12x', 'id': 1}" in done.stdout
    done = run_cli("dlq", "replay", q, "--func", "json:dumps")
    assert done.returncode == 2
    assert "--allow-pickle" in done.stderr and "nothing was replayed or changed" in done.stderr
    assert (q / "dlq.jsonl").read_bytes() == before
