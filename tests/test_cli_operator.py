"""The CLI on a real queue: grouping, repeated filters, paging, columns, defaults, help."""

from __future__ import annotations

import json

import pytest

from amorsize import DLQEntry
from tests.test_cli import HOUR, T0, ids_of, json_lines, read_dlq, run_cli, run_main, write_dlq


def mk(i: int, message: str, error_type: str = "ValueError", qualname: str | None = None, *,
       reason: str = "exception", function: str = "job.parse", host: str = "h1") -> DLQEntry:
    return DLQEntry({"n": i}, error_type, message, T0 + i * HOUR, reason=reason,
                    error_qualname=qualname or error_type, entry_id=f"{i:024x}aaaaaaaa",
                    metadata={"function": function, "host": host})


def queue(tmp_path):
    entries = [
        mk(0, "record 7 is malformed"),
        mk(1, "record 9 is malformed", host="h2"),
        mk(2, "Expecting value", "JSONDecodeError", "json.decoder.JSONDecodeError"),
        mk(3, "slow", "ItemTimeoutError", "amorsize.errors.ItemTimeoutError", reason="timeout"),
        mk(4, "crashed", "WorkerCrashedError", reason="worker_crash", function="__main__.f"),
    ]
    return write_dlq(tmp_path / "q", entries), entries


def listed(capsys, q, *args):
    code, out, err = run_main(capsys, "dlq", "list", q, "--json", *args)
    assert code == 0, err
    return [int(r["entry_id"][:24], 16) for r in json_lines(out)]


def test_repeated_filters_or_within_and_across(tmp_path, capsys):
    q, _ = queue(tmp_path)
    assert listed(capsys, q, "--reason", "worker_crash", "--reason", "timeout") == [3, 4]
    assert listed(capsys, q, "--reason", "worker_crash", "--reason", "timeout",
                  "--function", "f") == [4]
    assert listed(capsys, q, "--host", "h2", "--host", "h1", "--error-type", "valueerror") == [0, 1]


def test_error_type_any_case_and_by_suffix_with_a_suggestion(tmp_path, capsys):
    q, _ = queue(tmp_path)
    assert listed(capsys, q, "--error-type", "valueerror") == [0, 1]
    assert listed(capsys, q, "--error-type", "json.JSONDecodeError".lower()) == []  # not a suffix
    assert listed(capsys, q, "--error-type", "decoder.jsondecodeerror") == [2]
    assert listed(capsys, q, "--error-type", "JSONDecodeError") == [2]
    code, out, err = run_main(capsys, "dlq", "list", q, "--error-type", "ValueErorr")
    assert code == 0 and "no entries match" in out
    assert "did you mean 'ValueError'" in err


def test_list_newest_limit_offset_page(tmp_path, capsys):
    q, _ = queue(tmp_path)
    assert listed(capsys, q, "--newest", "--limit", "2") == [4, 3]
    assert listed(capsys, q, "--offset", "1", "--limit", "2") == [1, 2]
    assert listed(capsys, q, "--newest", "--page", "2", "--limit", "2") == [2, 1]
    assert listed(capsys, q, "--page", "3", "--limit", "2") == [4]
    assert listed(capsys, q, "--signature", "ValueError: record <num>") == [0, 1]


def test_list_fields_and_the_dropped_columns_line(tmp_path, capsys):
    q, _ = queue(tmp_path)
    code, out, err = run_main(capsys, "dlq", "list", q, "--fields", "id,signature,host")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "SIGNATURE", "HOST"]
    assert "ValueError: record <num> is malformed" in out and err == ""
    narrow = run_cli("dlq", "list", q, columns=60)
    assert narrow.returncode == 0
    assert "columns left out to fit 60 columns: reason, retries" in narrow.stderr
    assert "--fields, --wide or --json" in narrow.stderr
    wide = run_cli("dlq", "list", q, "--wide", columns=60)
    assert "REASON" in wide.stdout and "left out" not in wide.stderr
    code, _, err = run_main(capsys, "dlq", "list", q, "--fields", "id,nope")
    assert code == 2 and "unknown field(s) nope" in err


def test_summary_by_key_and_with_filters(tmp_path, capsys):
    q, _ = queue(tmp_path)
    code, out, _ = run_main(capsys, "dlq", "summary", q, "--by", "signature", "--json")
    grouped = json.loads(out)
    assert grouped["groups"][0] == {"key": "ValueError: record <num> is malformed", "count": 2,
                                    "example": {"entry_id": f"{0:024x}aaaaaaaa",
                                                "error_message": "record 7 is malformed"}}
    for by, expected in [("function", {"job.parse": 4, "__main__.f": 1}),
                         ("host", {"h1": 4, "h2": 1}),
                         ("reason", {"exception": 3, "timeout": 1, "worker_crash": 1})]:
        code, out, _ = run_main(capsys, "dlq", "summary", q, "--by", by, "--json")
        assert {g["key"]: g["count"] for g in json.loads(out)["groups"]} == expected
    code, out, _ = run_main(capsys, "dlq", "summary", q, "--by", "error-type")
    assert code == 0 and "amorsize.errors.ItemTimeoutError" in out and "e.g." not in out
    code, out, _ = run_main(capsys, "dlq", "summary", q, "--reason", "timeout", "--json")
    filtered = json.loads(out)
    assert code == 0
    assert filtered["total_entries"] == 1 and filtered["selected_of"] == 5
    assert filtered["reasons"] == {"timeout": 1}
    code, out, _ = run_main(capsys, "dlq", "summary", q)
    assert code == 0 and "top signatures" in out and "2  ValueError: record <num> is malformed" in out
    assert "by function:    job.parse 4, __main__.f 1" in out


def test_export_to_stdout(tmp_path, capsys):
    q, _ = queue(tmp_path)
    done = run_cli("dlq", "export", q, "--to", "-", "--reason", "timeout")
    assert done.returncode == 0, done.stderr
    assert [r["reason"] for r in json_lines(done.stdout)] == ["timeout"]
    assert "exported 1 of 5 entries to stdout" in done.stderr


def test_purge_dry_run_and_short_yes(tmp_path, capsys):
    q, _ = queue(tmp_path)
    code, out, _ = run_main(capsys, "dlq", "purge", q, "--dry-run", "--reason", "timeout")
    assert code == 0 and "would remove 1 of 5" in out and len(read_dlq(q)) == 5
    code, _, err = run_main(capsys, "dlq", "purge", q, "--dry-run", "-y")
    assert code == 2 and "not allowed with" in err
    code, out, _ = run_main(capsys, "dlq", "purge", q, "-y", "--reason", "timeout")
    assert code == 0 and "removed 1 of 5" in out and len(read_dlq(q)) == 4


def test_dir_defaults_to_the_env_then_the_library_default(tmp_path, capsys, monkeypatch):
    q, _ = queue(tmp_path)
    monkeypatch.setenv("AMORSIZE_DLQ_DIR", str(q))
    code, out, _ = run_main(capsys, "dlq", "list", "--json")
    assert code == 0 and len(json_lines(out)) == 5
    monkeypatch.delenv("AMORSIZE_DLQ_DIR")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q").rename(tmp_path / ".amorsize_dlq")
    code, out, _ = run_main(capsys, "dlq", "summary", "--json")
    assert code == 0 and json.loads(out)["total_entries"] == 5
    done = run_cli("dlq", "list", "--help", cwd=tmp_path)
    assert "AMORSIZE_DLQ_DIR" in done.stdout and ".amorsize_dlq" in done.stdout


@pytest.mark.parametrize("command, present, absent", [
    (["show"], ["  3 "], ["  1 ", "  4 ", "130"]),
    (["list"], ["  2 "], ["  1 ", "  4 "]),
    (["purge"], ["  4 "], ["  1 ", "130"]),
    (["replay"], ["  1 ", "  4 ", "130"], []),
])
def test_help_lists_only_the_exit_codes_that_apply(command, present, absent):
    done = run_cli("dlq", *command, "--help")
    epilog = done.stdout.split("exit codes:", 1)[1].split("\n\n", 1)[0]
    for code in present:
        assert code in epilog
    for code in absent:
        assert code not in epilog


def test_replay_skips_other_functions_unless_any_function(tmp_path):
    (tmp_path / "job.py").write_text("def parse(item):\n    return item\n")
    q, _ = queue(tmp_path)
    done = run_cli("dlq", "replay", q, "--func", "job:parse", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "skipped 1 entries recorded for other functions (__main__.f: 1)" in done.stderr
    assert [e.metadata["function"] for e in read_dlq(q)] == ["__main__.f"]
    done = run_cli("dlq", "replay", q, "--func", "job:parse", "--any-function", cwd=tmp_path)
    assert done.returncode == 0 and read_dlq(q) == []


def test_replay_timeout_fails_a_slow_item(tmp_path):
    (tmp_path / "slowjob.py").write_text(
        "import time\ndef parse(item):\n    if item['n'] == 0:\n        time.sleep(30)\n"
        "    return item\n")
    write_dlq(tmp_path / "q", [mk(0, "a", function="slowjob.parse"),
                               mk(1, "b", function="slowjob.parse")])
    done = run_cli("dlq", "replay", tmp_path / "q", "--func", "slowjob:parse", "--timeout", "1",
                   cwd=tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    left = read_dlq(tmp_path / "q")
    assert [(e.item, e.reason) for e in left] == [({"n": 0}, "timeout")]
    assert ids_of(run_cli("dlq", "list", tmp_path / "q", "--json").stdout) == [left[0].entry_id]


def test_tail_follows_new_entries(tmp_path):
    import subprocess
    import sys

    from amorsize import DeadLetterQueue, DLQPolicy
    from tests.test_cli import cli_env

    q, _ = queue(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "amorsize", "dlq", "tail", str(q), "-n", "1", "--json",
         "--duration", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        first = proc.stdout.readline()  # the last entry already there: the tail is following
        live = DeadLetterQueue(DLQPolicy(directory=q, max_entries=0))
        live.add({"n": 99}, ValueError("arrived late"))
        live.close()
        out, err = proc.communicate(timeout=30)
        out = first + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = json_lines(out)
    assert proc.returncode == 0, err
    assert [r["error_message"] for r in records] == ["crashed", "arrived late"]


def test_purge_older_than(tmp_path, capsys):
    import time

    fresh = DLQEntry({"n": 9}, "ValueError", "new", time.time(), entry_id="f" * 32)
    q, _ = queue(tmp_path)
    write_dlq(q, [fresh])
    code, out, _ = run_main(capsys, "dlq", "purge", q, "--older-than", "7d")
    assert code == 0 and "would remove 5 of 6" in out and len(read_dlq(q)) == 6
    code, out, _ = run_main(capsys, "dlq", "purge", q, "--older-than", "7d", "-y")
    assert code == 0 and [e.entry_id for e in read_dlq(q)] == [fresh.entry_id]
