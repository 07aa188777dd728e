"""Issue 12, "Why" 6: a script without ``if __name__ == "__main__":`` under spawn.

Spawn (and forkserver, Linux's default from Python 3.14) re-runs the main module
in every worker. Today that prints about 1,000 lines of tracebacks, dead-letters
innocent items as ``worker_crash`` and ends in ``CrashLoopError``; with Dask,
300+ lines ending in ``RuntimeError: Nanny failed to start``. Target: one clear
``AmorsizeError`` in a few lines naming the guard, nothing dead-lettered.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from fault_support import (
    ProcessTag,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
    run_script,
)

from amorsize import DeadLetterQueue, DLQPolicy

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("no_leaked_children")]

GUARD = 'if __name__ == "__main__":'
#: "A few lines, not a thousand": the error's own traceback and message fit in this.
#: Counted without the ``~~~^^^`` position markers (PYTHONNODEBUGRANGES): 3.11 adds 6 lines
#: of them to the same 31-line traceback and 3.13 adds 13, so the bound would measure the
#: interpreter, not amorsize.
MAX_STDERR_LINES = 40
#: "Stop at once": no crash loop, no retries of workers that can never start.
STOPS_WITHIN = 30.0

HAS_DASK = importlib.util.find_spec("amorsize_dask") is not None

UNGUARDED_RUNS = [
    pytest.param({"n_jobs": 2, "start_method": "spawn"}, id="n_jobs=2-spawn"),
    pytest.param({"start_method": "spawn"}, id="default-spawn"),
    pytest.param({"n_jobs": 2, "start_method": "forkserver"}, id="n_jobs=2-forkserver"),
    pytest.param({"backend": "dask", "n_jobs": 2}, id="dask-local-cluster",
                 marks=pytest.mark.skipif(not HAS_DASK, reason="amorsize-dask not installed")),
]


def last_report(stdout: str) -> Dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"the script printed no report; stdout:\n{stdout[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("options", UNGUARDED_RUNS)
def test_a_missing_main_guard_fails_fast_with_one_clear_error(
    tmp_path: Path, options: Dict[str, Any], process_tag: ProcessTag, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONNODEBUGRANGES", "1")
    dlq_dir = tmp_path / "dlq"
    began = time.monotonic()
    done = run_script(process_tag, "no_guard.py", str(dlq_dir), json.dumps(options), cwd=tmp_path)
    elapsed = time.monotonic() - began
    report = last_report(done.stdout)
    assert "error" in report, f"not an AmorsizeError: {report}\nstderr tail:\n{done.stderr[-1500:]}"
    assert GUARD in report["message"], report["message"]
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) <= MAX_STDERR_LINES, (
        f"{len(lines)} lines on stderr; the first 20:\n" + "\n".join(lines[:20])
    )
    assert GUARD in done.stderr
    assert len(DeadLetterQueue(DLQPolicy(directory=str(dlq_dir)))) == 0, "innocent items blamed"
    assert elapsed < STOPS_WITHIN, f"took {elapsed:.1f} s to give up"


def test_an_unguarded_script_still_runs_under_fork(tmp_path: Path, process_tag: ProcessTag) -> None:
    # The guard check must not fire where the guard is not needed.
    options = {"n_jobs": 2, "start_method": "fork"}
    done = run_script(process_tag, "no_guard.py", str(tmp_path / "dlq"), json.dumps(options),
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert last_report(done.stdout) == {"results": [x * 2 for x in range(40)]}
    assert done.stderr == ""
