"""Issue 12, "Why" 11: what ``dlq=`` accepts.

Today ``dlq=[]`` is silently accepted (the list receives entries) while
``dlq={}`` is refused. Target: a DeadLetterQueue, a SharedDeadLetterQueue, a
path (a DLQ directory, as shorthand) or None; anything else is a clear error.
``DeadLetterQueue("failed/")`` accepts a path too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from fault_probes import fail_odd

from amorsize import DeadLetterQueue, DLQPolicy, InvalidTypeError, execute, is_failure

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leaked_children")]

PATH_KINDS = [pytest.param(str, id="str"), pytest.param(Path, id="Path")]


@pytest.mark.parametrize("bad", [[], {}, 3], ids=["list", "dict", "int"])
def test_anything_but_a_queue_a_path_or_none_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidTypeError) as info:
        execute(fail_odd, range(4), dlq=bad, n_jobs=1)
    message = str(info.value)
    assert f"dlq={bad!r}" in message, message
    assert "DeadLetterQueue" in message and "path" in message, message
    if isinstance(bad, list):
        assert bad == [], "refused only after entries were appended to the list"


@pytest.mark.parametrize("as_path", PATH_KINDS)
def test_a_path_is_shorthand_for_a_queue_in_that_directory(
    tmp_path: Path, as_path: Callable[[str], Any]
) -> None:
    directory = tmp_path / "failed"
    results = execute(fail_odd, range(6), dlq=as_path(str(directory)), n_jobs=2,
                      start_method="fork")
    assert [is_failure(v) for v in results] == [False, True] * 3
    assert [v for v in results if not is_failure(v)] == [0, 4, 8]
    reopened = DeadLetterQueue(DLQPolicy(directory=str(directory)))
    assert sorted(e.item for e in reopened.get_entries()) == [1, 3, 5]
    assert {e.entry_id for e in reopened.get_entries()} == {v.entry_id for v in results if is_failure(v)}


@pytest.mark.parametrize("as_path", PATH_KINDS)
def test_dead_letter_queue_accepts_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_path: Callable[[str], Any]
) -> None:
    monkeypatch.chdir(tmp_path)
    dlq = DeadLetterQueue(as_path("failed/"))
    dlq.add("an item", ValueError("it failed"))
    dlq.flush()
    reopened = DeadLetterQueue(DLQPolicy(directory=str(tmp_path / "failed")))
    assert [(e.item, e.error_message) for e in reopened.get_entries()] == [("an item", "it failed")]
