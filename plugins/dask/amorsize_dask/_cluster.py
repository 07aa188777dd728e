"""Clusters amorsize starts itself (loopback only, crash isolation, kept at width); task errors in words."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Dict, Optional, Tuple

from amorsize_dask._logs import last_exit_code, restore_distributed_logs, route_distributed_logs
from amorsize_dask.errors import DaskConnectError

#: Seconds allowed for a worker of our cluster to start and reach the scheduler,
#: and to close the client and the cluster.
CLUSTER_START_TIMEOUT_SECONDS = 60.0
CLUSTER_CLOSE_TIMEOUT_SECONDS = 20.0
#: Dask configuration of clusters we start ourselves: a worker death fails its task
#: at once (the dispatcher does the splitting), and a worker holds one task at a time.
OWN_CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.worker-saturation": 1.0,
}

#: How long closing our cluster waits for a worker restart in flight (a crash at the end).
RESTART_SETTLE_SECONDS = 5.0
#: How long a crash report waits for the nanny of our cluster to log the exit code.
EXIT_CODE_WAIT_SECONDS = 0.5

log = logging.getLogger(__name__)


def connect(
    address: Optional[str], client: Any, timeout: float, n_jobs: Optional[int]
) -> Tuple[Any, Any, bool]:
    """``(cluster we started or None, client, whether we own the client)`` for a run.

    Starting our own cluster routes distributed's logs (see ``_logs``); the pool
    restores them when it closes, or this function does if starting fails.
    """
    from distributed import Client

    from amorsize.run.guard import watching_for_unguarded_main

    if client is not None:
        return None, client, False
    if address is not None:
        try:
            return None, Client(address, timeout=timeout, set_as_default=False), True
        except (OSError, asyncio.TimeoutError) as exc:
            raise DaskConnectError(
                f"cannot connect to the Dask scheduler at address={address!r} within "
                f"connect_timeout={timeout:g}s ({type(exc).__name__}: {exc})"
            ) from exc
    route_distributed_logs()
    try:
        with watching_for_unguarded_main("spawn"):  # a nanny re-runs an unguarded main module
            cluster = start_local_cluster(n_jobs)
        try:
            client = Client(cluster, timeout=timeout, set_as_default=False)
        except BaseException:
            close_quietly(None, cluster)
            raise
        try:
            from amorsize_dask._worker_logs import QuietWorkerLogs

            client.register_plugin(QuietWorkerLogs())  # the workers' own stderr
        except BaseException:
            close_quietly(client, cluster)
            raise
    except BaseException:
        restore_distributed_logs()
        raise
    return cluster, client, True


def start_local_cluster(n_workers: Optional[int] = None, **options: Any) -> Any:
    """A ``LocalCluster`` as amorsize starts it: loopback only, one thread per worker process."""
    import dask
    from distributed import LocalCluster

    from amorsize.backends import usable_cores

    settings: Dict[str, Any] = {
        "n_workers": n_workers or usable_cores(),
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "scheduler_port": 0,
        "death_timeout": CLUSTER_START_TIMEOUT_SECONDS,
    }
    settings.update(options)
    with dask.config.set(OWN_CLUSTER_CONFIG):
        return _cluster_class(LocalCluster)(**settings)


_classes: Dict[Any, Any] = {}


def _cluster_class(base: Any) -> Any:
    """``base`` (LocalCluster) minus the closing of nannies whose worker is restarting.

    ``SpecCluster`` closes a nanny for good when a worker of that name was removed
    ``distributed.deploy.lost-worker-timeout`` (15 s) earlier and is not registered
    at that very moment: meant for lost batch jobs, but here the nanny is restarting
    its worker, and with a function that crashes often the cluster shrank to zero
    workers (and workers running innocent chunks were killed with it). Worker
    bookkeeping of ``Cluster`` is kept; :func:`repair_cluster` remains a safety net.
    """
    if base not in _classes:
        from distributed.deploy.cluster import Cluster

        class KeepNanniesCluster(base):
            def _update_worker_status(self, op: Any, msg: Any) -> None:
                Cluster._update_worker_status(self, op, msg)

        _classes[base] = KeepNanniesCluster
    return _classes[base]


def repair_cluster(cluster: Any, width: int) -> None:
    """Start workers again for the names of our cluster whose nanny closed or vanished.

    A safety net behind :func:`_cluster_class`: whatever closed a nanny, ``scale``
    brings the cluster back to ``width`` workers.
    """
    from distributed.core import Status

    closed = [
        name for name, nanny in list(cluster.workers.items())
        if getattr(nanny, "status", None) in (Status.closed, Status.failed)
    ]
    for name in closed:
        cluster.worker_spec.pop(name, None)
    missing = set(cluster.worker_spec) - set(cluster.workers)
    if closed or missing or len(cluster.worker_spec) < width:
        log.info("amorsize-dask: restarting lost workers %s", sorted(map(str, {*closed, *missing})))
        cluster.scale(width)


def close_quietly(client: Any, cluster: Any) -> None:
    """Close ``client`` then ``cluster`` (either may be None), each with a timeout."""
    try:
        if client is not None:
            _let_restarts_finish(client, cluster)
            client.close(timeout=CLUSTER_CLOSE_TIMEOUT_SECONDS)
    finally:
        if cluster is not None:
            cluster.close(timeout=CLUSTER_CLOSE_TIMEOUT_SECONDS)


def _let_restarts_finish(client: Any, cluster: Any) -> None:
    """Wait (bounded) for workers our cluster's nannies are restarting after a crash.

    Closed while it starts, a worker raises ``ConnectionPool is closed``: distributed
    logs it at ERROR and its process prints a traceback, after the run has ended.
    """
    if cluster is None:
        return
    try:
        client.wait_for_workers(len(cluster.worker_spec), timeout=RESTART_SETTLE_SECONDS)
    except Exception:  # a worker that does not come back: close anyway
        pass


def describe_task_error(error: Any) -> str:
    """Why a Dask task of ours failed, in words (the likely cause first)."""
    name = type(error).__name__
    if name == "KilledWorker":
        return "the Dask worker died (KilledWorker: a crash, os._exit, a signal or out of memory)"
    if name == "CommClosedError":
        return "the connection to the Dask worker closed (the worker died)"
    return f"the Dask task failed ({name}: {str(error)[:200]})"


def crash_detail(cause: str, error: Any, *, own_cluster: bool) -> Dict[str, Any]:
    """DLQ metadata of a worker death: the worker's address, last known pid and exit code.

    The scheduler knows the address and pid of the worker that died; the exit code
    is known only on a cluster of ours, whose nannies log it here (see ``_logs``).
    Whatever is unknown stays None, and the entry's message says "unknown".
    """
    detail: Dict[str, Any] = {"cause": cause, "engine": "dask", "worker": None, "pid": None,
                              "exitcode": None}
    if error is not None:
        detail["error"] = repr(error)[:500]
    worker = getattr(error, "last_worker", None)
    if worker is not None:
        detail["worker"] = str(getattr(worker, "address", worker))
        pid = getattr(worker, "pid", None)
        detail["pid"] = pid if isinstance(pid, int) and pid > 0 else None
    if own_cluster and detail["pid"] is not None:
        deadline = time.monotonic() + EXIT_CODE_WAIT_SECONDS
        while (code := last_exit_code(detail["pid"])) is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the nanny notices the exit a moment after the scheduler
        detail["exitcode"] = code
    return detail
