"""A list input under fork: workers slice their inherited copy; the parent never pickles the items."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, List

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure
from amorsize.backends import inherited
from amorsize.backends.inherited import InputSlice, first_unsendable

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaked_children")]

PICKLED_IN_PARENT: List[int] = []


class Counted:
    """An item that notes every pickling of itself in the process that pickles it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> Any:
        PICKLED_IN_PARENT.append(self.n)
        return Counted, (self.n,)


def value_of(item: Any) -> int:
    return item.n * 2 if isinstance(item, Counted) else item() if callable(item) else item


@pytest.mark.parametrize("options", [{}, {"n_jobs": 2, "chunksize": 50}], ids=["default", "n_jobs=2"])
def test_the_parent_does_not_pickle_the_items_of_a_list_under_fork(options: Any) -> None:
    PICKLED_IN_PARENT.clear()
    n = 2_000
    assert execute(value_of, [Counted(i) for i in range(n)], start_method="fork", **options) == [
        2 * i for i in range(n)]
    # Only the size samples: the probe's items and one item per chunk.
    assert len(PICKLED_IN_PARENT) < n // 10, len(PICKLED_IN_PARENT)
    assert inherited._lent == {}  # withdrawn when the run ended


def test_under_spawn_the_items_are_sent() -> None:
    PICKLED_IN_PARENT.clear()
    n = 200
    assert execute(value_of, [Counted(i) for i in range(n)], n_jobs=2, chunksize=50,
                   start_method="spawn") == [2 * i for i in range(n)]
    assert len(PICKLED_IN_PARENT) >= n


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_an_item_only_cloudpickle_can_send_still_runs(start_method: str) -> None:
    items: List[Any] = [1, lambda: 20, 3]  # a lambda: pickle refuses it, cloudpickle sends it
    assert execute(value_of, items, n_jobs=2, chunksize=2, start_method=start_method) == [1, 20, 3]


def test_an_inherited_slice_with_an_unsendable_item_names_that_item(tmp_path: Path) -> None:
    import threading

    lock = threading.Lock()
    assert first_unsendable([1, 2, 3]) is None
    position, error = first_unsendable([1, lock, 3, lock])  # type: ignore[misc]
    assert position == 1 and "lock" in str(error)
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    results = execute(value_of, [0, lock, 2, lock], n_jobs=2, chunksize=4, dlq=dlq, start_method="fork")
    assert results[0] == 0 and results[2] == 2
    assert [is_failure(results[i]) and results[i].reason for i in (1, 3)] == ["unpicklable_item"] * 2
    assert sorted(e.metadata["index"] for e in dlq.get_entries()) == [1, 3]


def test_an_input_slice_reads_like_the_list_it_views() -> None:
    source = list(range(10))
    view = InputSlice(source, 7, 2, 8)
    assert len(view) == 6 and list(view) == [2, 3, 4, 5, 6, 7] and view == [2, 3, 4, 5, 6, 7]
    assert view[0] == 2 and view[-1] == 7
    with pytest.raises(IndexError):
        view[6]
    part = view[1:4]
    assert isinstance(part, InputSlice) and list(part) == [3, 4, 5] and part.token == 7
    assert list(view[4:]) == [6, 7] and list(view[5:2]) == [] and view[::2] == [2, 4, 6]
    assert pickle.loads(pickle.dumps(view)) == [2, 3, 4, 5, 6, 7]  # any other pickling: the items


def test_a_run_whose_pool_cannot_open_withdraws_its_input(monkeypatch: Any) -> None:
    from amorsize.backends import ProcessBackend

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError("no processes for you")

    monkeypatch.setattr(ProcessBackend, "open", broken)
    with pytest.raises(OSError, match="no processes"):
        execute(value_of, list(range(100)), n_jobs=2, start_method="fork")
    assert inherited._lent == {}  # the caller's list is not kept alive by the run
