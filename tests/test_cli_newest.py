"""``list --newest --limit N`` reads only the lines it shows: same output as the full load."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amorsize.cli import newest
from tests.test_cli import run_main
from tests.test_cli_operator import mk


def _journal(tmp_path, lines: list[bytes]) -> str:
    directory = tmp_path / "q"
    directory.mkdir(mode=0o700, exist_ok=True)
    with open(directory / "dlq.jsonl", "wb") as handle:
        handle.write(b"".join(lines))
    return str(directory)


def _line(i: int, message: str) -> bytes:
    from amorsize.dlq.records import encode_entry

    return encode_entry(mk(i, message), pickle_everything=False)


def _both(capsys, directory: str, *args: str):
    """The fast path's result and the full load's (a --since that matches all forces it)."""
    fast = run_main(capsys, "dlq", "list", directory, "--newest", *args)
    full = run_main(capsys, "dlq", "list", directory, "--newest", "--since", "1970-01-01", *args)
    return fast, full


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 6), min_size=0, max_size=12), limit=st.integers(1, 5),
       offset=st.integers(0, 3), json=st.booleans())
def test_newest_matches_the_full_load_with_repeated_ids(tmp_path, capsys, ids, limit, offset, json):
    # A repeated id is an update: the later record wins and keeps the first one's place.
    lines = [_line(i, f"failure {n}") for n, i in enumerate(ids)]
    directory = _journal(tmp_path, lines)
    args = ["--limit", str(limit), "--offset", str(offset)] + (["--json"] if json else [])
    fast, full = _both(capsys, directory, *args)
    assert fast == full


@pytest.mark.parametrize("tail", [b'{"entry_id":"torn', b"not json at all\n", b"\n\n"])
def test_newest_matches_the_full_load_on_odd_lines(tmp_path, capsys, tail):
    lines = [_line(i, "boom") for i in range(4)]
    directory = _journal(tmp_path, [*lines[:2], tail, *lines[2:]])
    fast, full = _both(capsys, directory, "--limit", "3")
    assert fast == full
    directory = _journal(tmp_path, [*lines, tail])  # as the last line: a torn tail
    fast, full = _both(capsys, directory, "--limit", "3")
    assert fast == full


def test_newest_reports_an_unreadable_shown_record_with_exit_3(tmp_path, capsys):
    bad = _line(3, "boom").replace(b'"timestamp":', b'"timestamp":{"x":1},"was":')
    directory = _journal(tmp_path, [_line(0, "a"), _line(1, "b"), bad, _line(4, "c")])
    code, _, err = run_main(capsys, "dlq", "list", directory, "--newest", "--limit", "2")
    assert code == 3
    assert os.path.join(directory, "dlq.jsonl") in err and "line 3" in err


def test_only_plain_newest_limit_takes_the_fast_path():
    import argparse

    plain = argparse.Namespace(newest=True, limit=5, offset=0)
    assert newest.applies(plain)
    assert not newest.applies(argparse.Namespace(newest=True, limit=None))
    assert not newest.applies(argparse.Namespace(newest=True, limit=5, grep="x"))
    assert not newest.applies(argparse.Namespace(newest=False, limit=5))
