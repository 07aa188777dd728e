"""Fixtures for the Dask backend: one loopback cluster of 2 workers shared per module."""

from __future__ import annotations

import logging
import time
from typing import Iterator, List, Set, Tuple

import psutil
import pytest

N_WORKERS = 2
#: Worker deaths are the point of several tests: keep their expected log lines quiet.
QUIET_LOGGERS = ("distributed.scheduler", "distributed.nanny", "distributed.worker",
                 "distributed.core", "distributed.comm", "distributed.batched")


@pytest.fixture(autouse=True, scope="session")
def _quiet_distributed() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """A client on a 2-worker loopback cluster (allowed-failures=0, as amorsize starts it)."""
    from amorsize_dask import start_local_cluster
    from distributed import Client

    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    ports_before = listening([me])
    cluster = start_local_cluster(N_WORKERS, silence_logs=logging.CRITICAL)
    client = Client(cluster, set_as_default=False, timeout=30)
    try:
        yield client
    finally:
        client.close(timeout=20)
        cluster.close(timeout=20)
    assert not live_children(children_before), "the cluster left processes behind"
    assert listening([me]) <= ports_before, "the cluster left a port open"


@pytest.fixture
def healthy(client: object) -> object:
    """The shared client, once its cluster is back to full width (tests kill workers)."""
    client.wait_for_workers(N_WORKERS, timeout=30)  # type: ignore[attr-defined]
    return client


def listening(processes: List[psutil.Process]) -> Set[Tuple[str, int]]:
    """Addresses the given processes listen on (TCP)."""
    found = set()
    for proc in processes:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            pass
    return found


def _helper(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return True
    return "resource_tracker" in cmdline or "forkserver" in cmdline


def new_children(exclude: Set[int]) -> List[psutil.Process]:
    """Running children of this process (not helpers) whose pid is not in ``exclude``."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in exclude and proc.status() != psutil.STATUS_ZOMBIE and not _helper(proc):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def live_children(exclude: Set[int]) -> List[psutil.Process]:
    """``new_children``, after giving them up to 10 s to exit."""
    leftovers: List[psutil.Process] = []
    for _ in range(100):
        leftovers = new_children(exclude)
        if not leftovers:
            break
        time.sleep(0.1)
    return leftovers
