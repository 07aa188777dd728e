"""execute() and imap() on the Dask backend: same results and failures as the local pool."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")
pytest.importorskip("amorsize_dask")

import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest
from amorsize_dask import DaskBackend

from amorsize import (
    DeadLetterQueue,
    DLQPolicy,
    SharedDeadLetterQueue,
    execute,
    imap,
    is_failure,
)
from amorsize.backends import available_backends, resolve_backend

# Workers import nothing from this file: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square_or_fail(x: int) -> int:
    if x % 5 == 2:
        raise ValueError(f"bad item {x}")
    return x * x


def exit_on_13(x: int) -> int:
    if x == 13:
        os._exit(7)
    return x + 1


def sleep_on_4(x: int) -> int:
    if x == 4:
        time.sleep(60)
    return x


@pytest.mark.timeout(30)
def test_registered_under_the_entry_point_group() -> None:
    assert "dask" in available_backends()
    assert isinstance(resolve_backend("dask"), DaskBackend)


@pytest.mark.timeout(30)
def test_an_address_and_a_client_together_are_refused() -> None:
    with pytest.raises(ValueError, match="address or a client"):
        DaskBackend(address="tcp://127.0.0.1:8786", client=object())
    backend = resolve_backend("dask")
    assert backend.address is None and backend.client is None  # a cluster of its own


@pytest.mark.timeout(60)
def test_core_amorsize_never_imports_dask() -> None:
    code = textwrap.dedent(
        """
        import sys
        import amorsize, amorsize.backends, amorsize.executor, amorsize_dask
        from amorsize import execute
        assert execute(abs, [-1, -2], n_jobs=2) == [1, 2]
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
        assert not leaked, leaked
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=50)


@pytest.mark.timeout(60)
def test_failures_land_in_a_dead_letter_queue(healthy: object, tmp_path) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    items = list(range(40))
    out = execute(square_or_fail, items, backend=DaskBackend(client=healthy), dlq=dlq, chunksize=6)
    assert [v for v in out if not is_failure(v)] == [x * x for x in items if x % 5 != 2]
    entries = sorted(dlq.get_entries(), key=lambda e: e.item)
    assert [e.item for e in entries] == [x for x in items if x % 5 == 2]
    assert {(e.reason, e.error_type) for e in entries} == {("exception", "ValueError")}
    assert all(e.metadata["index"] == e.item for e in entries)
    assert "bad item" in (entries[0].traceback or "")


@pytest.mark.timeout(60)
def test_failures_land_in_a_shared_dead_letter_queue(healthy: object, tmp_path) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=str(tmp_path))) as dlq:
        out = execute(square_or_fail, range(12), backend=DaskBackend(client=healthy), dlq=dlq)
        assert sorted(e.item for e in dlq.get_entries()) == [2, 7]
        assert dlq.get_summary()["error_types"] == {"ValueError": 2}
    assert sum(map(is_failure, out)) == 2


@pytest.mark.timeout(60)
def test_a_lambda_runs_and_imap_yields_in_completion_order(healthy: object, tmp_path) -> None:
    offset = 10
    backend = DaskBackend(client=healthy)
    assert execute(lambda x: x + offset, range(20), backend=backend, chunksize=3) == [
        x + offset for x in range(20)
    ]
    # Completion order, for real: item 0 is held until the consumer has seen the 14 others
    # (an imap that kept input order would only yield them after the 30 s fallback).
    flag = str(tmp_path / "others-seen")

    def head_waits(x: int) -> int:
        deadline = time.monotonic() + 30
        while x == 0 and not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        return -x

    out = []
    for value in imap(head_waits, range(15), backend=backend, chunksize=1, ordered=False):
        out.append(value)
        if len(out) == 14:
            open(flag, "w").close()
    assert sorted(out) == sorted(-x for x in range(15)) and out[-1] == 0


@pytest.mark.timeout(60)
def test_a_function_workers_cannot_import_fails_per_item(healthy: object, tmp_path) -> None:
    (tmp_path / "only_in_parent.py").write_text("def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_in_parent

        dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path / "dlq")))
        out = execute(only_in_parent.double, [1, 2, 3], backend=DaskBackend(client=healthy), dlq=dlq)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_in_parent", None)
    assert all(is_failure(v) for v in out)
    entries = dlq.get_entries()
    assert sorted(e.item for e in entries) == [1, 2, 3]
    assert all("could not be loaded on the Dask worker" in e.error_message for e in entries)


@pytest.mark.timeout(60)
def test_a_worker_killed_by_os_exit_costs_only_the_poison_item(healthy: object, tmp_path) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    items = list(range(24))
    out = execute(exit_on_13, items, backend=DaskBackend(client=healthy), dlq=dlq, chunksize=8)
    assert [v for v in out if not is_failure(v)] == [x + 1 for x in items if x != 13]
    (entry,) = dlq.get_entries()
    assert (entry.item, entry.reason, entry.error_type) == (13, "worker_crash", "WorkerCrashedError")
    assert entry.metadata["index"] == 13 and entry.metadata["engine"] == "dask"
    assert is_failure(out[13])


@pytest.mark.timeout(60)
def test_an_item_past_the_timeout_is_dead_lettered_alone(healthy: object, tmp_path) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    began = time.monotonic()
    out = execute(sleep_on_4, range(10), backend=DaskBackend(client=healthy), dlq=dlq,
                  timeout=1.0, chunksize=5)
    assert time.monotonic() - began < 30
    assert [v for v in out if not is_failure(v)] == [x for x in range(10) if x != 4]
    (entry,) = dlq.get_entries()
    assert (entry.item, entry.reason, entry.error_type) == (4, "timeout", "ItemTimeoutError")
    assert entry.metadata["timeout_seconds"] == 1.0


@pytest.mark.timeout(60)
def test_on_failure_raise_stops_the_run(healthy: object) -> None:
    # The worker's own exception type, with its traceback text on the Dask worker as cause.
    with pytest.raises(ValueError, match=r"^bad item (2|7)$") as info:
        execute(square_or_fail, range(10), backend=DaskBackend(client=healthy), chunksize=2)
    assert "square_or_fail" in str(info.value.__cause__)


@pytest.mark.timeout(60)
def test_a_cluster_given_by_address_is_left_running(healthy: object) -> None:
    address = healthy.scheduler.address  # type: ignore[attr-defined]
    assert execute(abs, [-3, 4], backend=DaskBackend(address=address)) == [3, 4]
    assert execute(abs, [-5], backend=DaskBackend(client=healthy)) == [5]
    assert healthy.status == "running"  # type: ignore[attr-defined]
    assert healthy.submit(abs, -1, pure=False).result(timeout=10) == 1  # type: ignore[attr-defined]
