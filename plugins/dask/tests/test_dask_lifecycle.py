"""backend="dask" starts its own loopback cluster and leaves nothing behind."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")
pytest.importorskip("amorsize_dask")

import logging
import os
import sys
import time
from typing import Any, List, Set, Tuple

import cloudpickle
import dask
import psutil
import pytest
from amorsize_dask import DaskBackend
from conftest import listening, live_children, new_children

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def halve_or_fail(x: int) -> float:
    if x == 3:
        raise KeyError(x)
    return x / 2


@pytest.mark.timeout(90)
def test_backend_dask_runs_on_a_loopback_cluster_and_closes_it(tmp_path) -> None:
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    listening_before = listening([me])
    during: List[Tuple[int, Set[Tuple[str, int]]]] = []

    def snapshot(done: int, total: Any) -> None:
        if not during:
            children = [p for p in me.children(recursive=True) if p.pid not in children_before]
            during.append((len(new_children(children_before)), listening([me, *children])))

    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    out = execute(halve_or_fail, range(20), backend="dask", n_jobs=2, dlq=dlq, on_progress=snapshot)

    assert [v for v in out if not is_failure(v)] == [x / 2 for x in range(20) if x != 3]
    assert [e.item for e in dlq.get_entries()] == [3]
    (n_workers, addresses), *_ = during
    assert n_workers == 2
    assert addresses, "the scheduler and workers should listen somewhere"
    assert {ip for ip, _port in addresses} == {"127.0.0.1"}, addresses  # never 0.0.0.0
    assert not any(port == 8787 for _ip, port in addresses)
    assert not live_children(children_before), "worker processes outlived the run"
    assert listening([me]) <= listening_before, "the run left a port open"


def busy_exit_on_poison(x: int) -> int:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    if x in POISON:
        os._exit(3)
    return x


POISON = (40, 170)


@pytest.mark.timeout(120)
def test_repeated_crashes_cost_only_the_poison_items_and_never_shrink_the_cluster(tmp_path) -> None:
    # A short lost-worker-timeout makes Dask close restarting workers' nannies often;
    # the backend must start them again (and bisection must not trip the crash budget).
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "300ms"}):
        out = execute(busy_exit_on_poison, range(300), backend="dask", n_jobs=2, dlq=dlq)
    assert [v for i, v in enumerate(out) if i not in POISON] == [x for x in range(300) if x not in POISON]
    assert sorted((e.item, e.reason) for e in dlq.get_entries()) == [(x, "worker_crash") for x in POISON]
    assert not live_children(children_before)


def sleep_on_4_exit_on_11(x: int) -> int:
    if x == 4:
        time.sleep(60)
    if x == 11:
        os._exit(5)
    return x


@pytest.mark.timeout(120)
def test_someone_elses_cluster_with_dask_defaults_isolates_timeouts_and_crashes(tmp_path) -> None:
    # Dask's default allowed-failures (3) retries a task that killed its worker; the
    # timeout report cancels the task instead, and a crash still costs one item.
    import dask
    from distributed import Client, LocalCluster

    # Dask's defaults but one: a SpecCluster closes a nanny for good when its worker has
    # been gone lost-worker-timeout (15 s; read when a worker leaves). On a loaded 2-core
    # machine two restarts can take that long, the cluster shrank to no worker, and the
    # test measured that instead of allowed-failures (our own clusters keep their
    # nannies: amorsize_dask._cluster).
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "300s"}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
        client = Client(cluster, set_as_default=False, timeout=30)
        try:
            dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
            out = execute(sleep_on_4_exit_on_11, range(16), backend=DaskBackend(client=client),
                          dlq=dlq, timeout=1.0, chunksize=4)
            assert [v for v in out if not is_failure(v)] == [x for x in range(16) if x not in (4, 11)]
            assert sorted((e.item, e.reason) for e in dlq.get_entries()) == [
                (4, "timeout"), (11, "worker_crash")
            ]
            assert client.status == "running"
        finally:
            client.close(timeout=20)
            cluster.close(timeout=20)
