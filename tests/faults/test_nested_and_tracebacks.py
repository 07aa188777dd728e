"""Issue 12, "Why" 7 and 8: execute() inside a worker; tracebacks of a script's functions.

Today a nested ``execute()`` fails with ``daemonic processes are not allowed to
have children``; target: it runs serially inside that worker. Today a function
defined in ``__main__`` and sent by value shows ``File "<dynamic-code>"`` in
``amorsize dlq show``; target: the script's path, line and source line, on every
backend.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
from fault_probes import nested
from fault_support import (
    SCRIPTS,
    ProcessTag,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
    run_script,
)

from amorsize import DeadLetterQueue, DLQPolicy, execute

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("no_leaked_children")]

HAS_DASK = importlib.util.find_spec("amorsize_dask") is not None


@pytest.mark.parametrize("inner", [{}, {"n_jobs": 2}], ids=["inner-default", "inner-n_jobs=2"])
def test_nested_execute_runs_serially_inside_the_worker(
    start_method: str, inner: Dict[str, Any], process_tag: ProcessTag
) -> None:
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    sizes = [3, 5, 7, 9]
    func = functools.partial(nested, inner=inner)
    results = execute(func, sizes, n_jobs=2, chunksize=1, dlq=dlq, start_method=start_method)
    assert not dlq.get_entries(), [(e.error_type, e.error_message) for e in dlq.get_entries()]
    for size, (outer_pid, inner_pids, total) in zip(sizes, results):
        assert outer_pid != os.getpid(), "the outer call did not run in a worker"
        assert inner_pids == [outer_pid], "the inner execute() left its worker"
        assert total == sum(2 * i for i in range(size))


# -- tracebacks of a script's own function ------------------------------------------

SCRIPT = SCRIPTS / "main_traceback.py"
RAISE_LINE = 'raise ValueError(f"item {x} is odd")'

TRACEBACK_RUNS = [
    pytest.param({"start_method": "fork"}, id="default-fork"),
    pytest.param({"start_method": "spawn"}, id="default-spawn"),
    pytest.param({"n_jobs": 1, "start_method": "spawn"}, id="n_jobs=1-spawn"),
    pytest.param({"n_jobs": 2, "start_method": "fork"}, id="n_jobs=2-fork"),
    pytest.param({"n_jobs": 2, "start_method": "spawn"}, id="n_jobs=2-spawn"),
    pytest.param({"backend": "in_process"}, id="in_process"),
    pytest.param({"backend": "dask", "n_jobs": 2}, id="dask",
                 marks=pytest.mark.skipif(not HAS_DASK, reason="amorsize-dask not installed")),
]


def raise_line_number() -> int:
    for number, line in enumerate(SCRIPT.read_text().splitlines(), start=1):
        if RAISE_LINE in line:
            return number
    raise AssertionError(f"{RAISE_LINE!r} not found in {SCRIPT}")


def dlq_show(directory: Path, entry_id: str, tag: ProcessTag) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "amorsize", "dlq", "show", str(directory), entry_id],
        capture_output=True, text=True, timeout=60, env=tag.env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("options", TRACEBACK_RUNS)
def test_dlq_show_points_into_the_users_script(
    tmp_path: Path, options: Dict[str, Any], process_tag: ProcessTag
) -> None:
    dlq_dir = tmp_path / "dlq"
    done = run_script(process_tag, SCRIPT.name, str(dlq_dir), json.dumps(options), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = DeadLetterQueue(DLQPolicy(directory=str(dlq_dir))).get_entries()
    assert sorted(e.item for e in entries) == [1, 3, 5]
    caller = int(done.stdout.split()[0])
    in_caller = options.get("backend") == "in_process"  # the one place user code may run there
    for entry in entries:
        assert (entry.metadata["pid"] == caller) == in_caller, (options, entry.metadata, caller)
    where = f'File "{SCRIPT}", line {raise_line_number()}, in work'
    for entry in entries:
        shown = dlq_show(dlq_dir, entry.entry_id, process_tag)
        assert where in shown, f"expected {where!r} in:\n{shown}"
        assert RAISE_LINE in shown, f"no source line in:\n{shown}"
        assert "<dynamic-code>" not in shown
