"""What a user sees from the Dask plugin: a clear error for a bad address, named crashes, a quiet cluster."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import cloudpickle
import psutil
import pytest

pytest.importorskip("distributed")
pytest.importorskip("amorsize_dask")

from amorsize_dask import DaskBackend, DaskConnectError
from conftest import QUIET_LOGGERS, live_children

from amorsize import AmorsizeError, DeadLetterQueue, DLQPolicy, execute, is_failure
from amorsize.backends import ChunkLost, ChunkTask
from amorsize.errors import InvalidArgumentError
from amorsize.run.failures import lost_entry

# Workers import nothing from this file: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_bad_address_raises_an_amorsize_error_naming_it_within_the_connect_timeout() -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(DaskConnectError) as caught:
        execute(abs, [1, 2], backend=DaskBackend(address=address, connect_timeout=1))
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, AmorsizeError) and isinstance(caught.value, ConnectionError)
    assert address in str(caught.value) and "connect_timeout=1s" in str(caught.value)
    assert elapsed < 20, f"took {elapsed:.1f}s; the default connect timeout is 30s"


@pytest.mark.parametrize("value", [0, -1, float("nan"), "10"])
def test_a_bad_connect_timeout_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="connect_timeout"):
        DaskBackend(address="tcp://127.0.0.1:8786", connect_timeout=value)  # type: ignore[arg-type]


def exit_7_on_3(x: int) -> int:
    if x == 3:
        os._exit(7)
    return x + 1


@pytest.fixture
def distributed_logging_as_shipped() -> Iterator[None]:
    """Undo conftest's session-wide quieting, so a test sees what a user would."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _logger_state() -> Tuple[List[logging.Handler], bool, int]:
    logger = logging.getLogger("distributed")
    return list(logger.handlers), logger.propagate, logger.level


@pytest.mark.timeout(120)
def test_our_cluster_is_quiet_and_a_crash_names_worker_pid_and_exit_code(
    distributed_logging_as_shipped: None, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    before = _logger_state()
    caplog.set_level(logging.DEBUG, logger="amorsize")
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    out = execute(exit_7_on_3, list(range(8)), backend="dask", n_jobs=2, dlq=dlq, chunksize=2)
    assert [v for v in out if not is_failure(v)] == [x + 1 for x in range(8) if x != 3]
    (entry,) = dlq.get_entries()
    message = entry.error_message
    assert re.search(r"\(worker tcp://127\.0\.0\.1:\d+, pid \d+, exit code 7\)$", message), message
    assert isinstance(entry.metadata["pid"], int) and entry.metadata["exitcode"] == 7
    # Quiet: distributed's records of the crash reached neither stderr nor root logging above DEBUG.
    err = capfd.readouterr().err
    assert not re.search(r"- (ERROR|WARNING|CRITICAL) -", err), err
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [(r.name, r.getMessage()) for r in loud]
    routed = [r for r in caplog.records
              if r.name == "amorsize.dask" and "distributed.scheduler" in r.getMessage()]
    assert routed and all(r.levelno == logging.DEBUG for r in routed)
    assert _logger_state() == before, "distributed's logging was not restored"
    assert not live_children(children_before), "the cluster left processes behind"


@pytest.mark.timeout(60)
def test_a_users_cluster_keeps_its_logging_and_an_unknown_exit_code_is_said(
    healthy: object, tmp_path: Path
) -> None:
    before = _logger_state()
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    execute(exit_7_on_3, list(range(6)), backend=DaskBackend(client=healthy), dlq=dlq, chunksize=2)
    assert _logger_state() == before
    (entry,) = dlq.get_entries()
    assert re.search(r"\(worker tcp://127\.0\.0\.1:\d+, pid \d+, exit code unknown\)$", entry.error_message)
    assert entry.metadata["exitcode"] is None


def test_a_crash_whose_worker_is_unknown_says_so() -> None:
    task = ChunkTask(0, 10, ["x"])
    event = ChunkLost(task, 0, "worker_crash", {"cause": "the Dask worker died"})
    entry = lost_entry(task, 0, event, "f")
    assert entry.error_message.endswith("while running this item (pid unknown, exit code unknown)")
    timed_out = lost_entry(task, 0, ChunkLost(task, 0, "timeout", {"timeout_seconds": 1.0}), "f")
    assert "its worker (pid unknown) was terminated" in timed_out.error_message


def _state_machine_level() -> int:
    return logging.getLogger("distributed.worker.state_machine").getEffectiveLevel()


@pytest.mark.timeout(90)
def test_the_workers_of_our_cluster_log_only_errors() -> None:
    # A task cancelled while it runs makes its worker log a WARNING on the shared
    # stderr; our own cluster's workers keep only ERROR and above (a user's keep theirs).
    from amorsize_dask._cluster import close_quietly, connect
    from amorsize_dask._logs import restore_distributed_logs

    cluster, client, _owned = connect(None, None, 30.0, 2)
    try:
        levels = client.run(_state_machine_level)
        assert levels and all(level >= logging.ERROR for level in levels.values()), levels
    finally:
        close_quietly(client, cluster)
        restore_distributed_logs()


class _Recorder:
    def __init__(self, calls: list, wait_error: Optional[BaseException] = None) -> None:
        self.calls, self.wait_error = calls, wait_error
        self.worker_spec = {0: {}, 1: {}}

    def wait_for_workers(self, n_workers: int, timeout: float) -> None:
        self.calls.append(("wait", n_workers))
        if self.wait_error is not None:
            raise self.wait_error

    def close(self, timeout: float) -> None:
        self.calls.append(("close", type(self).__name__))


def test_closing_our_cluster_first_lets_a_restarting_worker_finish_starting() -> None:
    # A worker closed while it starts (its nanny restarts it after a crash near the end)
    # makes distributed log "ConnectionPool is closed" at ERROR, after the run.
    from amorsize_dask._cluster import close_quietly

    calls: list = []
    close_quietly(_Recorder(calls), _Recorder(calls))
    assert calls == [("wait", 2), ("close", "_Recorder"), ("close", "_Recorder")]
    calls.clear()
    close_quietly(_Recorder(calls, wait_error=TimeoutError("never came back")), _Recorder(calls))
    assert calls == [("wait", 2), ("close", "_Recorder"), ("close", "_Recorder")]  # closed anyway
