"""Issue 12, "Why" 2: every BaseException raised by ``func`` is an item failure, on every backend.

Today ``SystemExit``, ``GeneratorExit`` and a custom ``BaseException`` abort the
whole run on the default path and with ``n_jobs=1``, and become ``worker_crash``
without a traceback with ``n_jobs=2``. Target: each is an item failure with
reason ``exception`` and its traceback, the same everywhere, and so is a
``KeyboardInterrupt`` raised by the function itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict

import pytest
from fault_probes import raise_base_at
from fault_support import (
    ProcessTag,
    process_tag_fixture,  # noqa: F401 - registers the process_tag fixture
)

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leaked_children")]

#: One item per kind, spread so the optimizer's dry run meets the first ones.
KINDS = {1: "SystemExit", 4: "GeneratorExit", 7: "custom", 10: "KeyboardInterrupt"}
ERROR_TYPES = {"SystemExit": "SystemExit", "GeneratorExit": "GeneratorExit",
               "custom": "ProbeBaseException", "KeyboardInterrupt": "KeyboardInterrupt"}
N_ITEMS = 12

BACKENDS = [
    pytest.param({}, "fork", id="default-fork"),
    pytest.param({}, "spawn", id="default-spawn"),
    pytest.param({"n_jobs": 1}, "fork", id="n_jobs=1-fork"),
    pytest.param({"n_jobs": 1}, "spawn", id="n_jobs=1-spawn"),
    pytest.param({"n_jobs": 2, "chunksize": 3}, "fork", id="n_jobs=2-fork"),
    pytest.param({"n_jobs": 2, "chunksize": 3}, "spawn", id="n_jobs=2-spawn"),
    pytest.param({"backend": "in_process"}, None, id="in_process"),
]


def call_guarded(run: Callable[[], Any]) -> Any:
    """Run ``run``; a BaseException escaping it fails the test (and never stops pytest)."""
    try:
        return run()
    except Exception:
        raise
    except BaseException as escaped:  # what must not escape
        pytest.fail(f"{type(escaped).__name__}({escaped}) raised by func escaped execute()")


@pytest.mark.parametrize("options, start_method", BACKENDS)
def test_base_exceptions_are_item_failures_with_tracebacks(
    options: Dict[str, Any], start_method: Any, process_tag: ProcessTag
) -> None:
    if start_method is not None:
        options = dict(options, start_method=start_method)
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False))
    func = functools.partial(raise_base_at, kinds=KINDS)
    results = call_guarded(lambda: execute(func, range(N_ITEMS), dlq=dlq, **options))

    assert len(results) == N_ITEMS, f"{len(results)} of {N_ITEMS} results"
    for i, value in enumerate(results):
        if i not in KINDS:
            assert value == i * 2, (i, value)
    entries = {e.item: e for e in dlq.get_entries()}
    assert sorted(entries) == sorted(KINDS), f"dead-lettered: {sorted(entries)}"
    for item, kind in KINDS.items():
        entry, value = entries[item], results[item]
        assert is_failure(value) and value.entry_id == entry.entry_id, (item, value)
        assert entry.reason == "exception", (kind, entry.reason, entry.error_message)
        assert entry.error_type.split(".")[-1] == ERROR_TYPES[kind], (kind, entry.error_type)
        assert entry.traceback, f"{kind}: traceback not recorded"
        assert "in raise_base_at" in entry.traceback, (kind, entry.traceback)
        assert "raise make_base(kinds[x])" in entry.traceback, (kind, entry.traceback)
