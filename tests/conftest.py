"""Shared fixtures: every suite that starts processes runs under fork and spawn."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable, Iterator

import psutil
import pytest
from _http_service import HTTPService
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

START_METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Run the test once per start method we support and test (fork, spawn)."""
    return str(request.param)


def _is_multiprocessing_helper(proc: psutil.Process) -> bool:
    # The resource tracker and the forkserver are started once per interpreter and
    # live until it exits, by design; they are not leaks.
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "resource_tracker" in cmdline or "forkserver" in cmdline


def _alive(proc: psutil.Process) -> bool:
    # A worker the run's reaper thread is ending may exit, or be reaped, between listing
    # the children and asking each for its status.
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):  # gone: psutil may report it as a missing /proc file
        return False


@pytest.fixture
def no_leaked_children():
    """Fail the test if it leaves child processes of this process behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline_children = []
    for _ in range(50):
        deadline_children = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before and _alive(p) and not _is_multiprocessing_helper(p)
        ]
        if not deadline_children:
            break
        psutil.wait_procs(deadline_children, timeout=0.1)
    assert not deadline_children, f"leaked child processes: {deadline_children}"


@pytest.fixture
def http_service() -> Iterator[Callable[..., HTTPService]]:
    """Start rate-limited HTTP services on 127.0.0.1 (see tests/_http_service.py); stopped after."""
    started: list[HTTPService] = []

    def start(**options: Any) -> HTTPService:
        service = HTTPService(**options).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
