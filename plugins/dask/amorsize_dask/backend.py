"""The Dask distributed backend: amorsize chunks as Dask tasks.

Data flow::

 parent process (amorsize dispatcher)          | Dask scheduler      | Dask workers (1 thread each)
                                               |                     |
 ChunkTask ──pickle──► client.submit(run_task, | queue, assign ────► | run_task(spec_bytes, task_bytes):
   spec_bytes, task_bytes, key=unique,         |                     |   load spec (cached per run)
   pure=False)  one future per busy slot       |                     |   run_chunk + encode_result
                                               |                     |   watchdog: item > timeout →
 wait(FIRST_COMPLETED, timeout=poll) ◄─────────| event log ◄─────────|     log_event(key, position),
   finished → result(timeout) → ChunkDone      |                     |     os._exit (nanny restarts)
   KilledWorker / lost / comm closed           |                     |
     → timeout report for the key? → ChunkLost(position, "timeout")
     → otherwise ChunkLost(None, "worker_crash"): the dispatcher bisects

**Slots.** Like the local pool, at most one chunk per worker thread is in
flight, so a worker that dies holds at most one of our chunks and nothing of
ours waits in its queue.

**Worker deaths.** Dask cannot say which item of a task was running when its
worker died, so a lost chunk is reported with ``position=None`` and the
dispatcher bisects it until the poison item stands alone. A one-item chunk is
sent once more before it is reported (``SINGLE_ITEM_CONFIRMATIONS``): while a
worker restarts, the scheduler may place two of our tasks on the surviving
worker, and an innocent task that dies with it must not be dead-lettered.

**Clusters we start** (no address, no client): a ``LocalCluster`` on loopback
with the dashboard on ``127.0.0.1:<random port>``, ``allowed-failures=0`` (a
crash is reported at once; the dispatcher does the splitting) and
``worker-saturation=1.0``; it is closed at the end of the run. Its nannies are
never closed by the cluster while they restart a worker, and missing workers are
started again (see :mod:`amorsize_dask._cluster`). A cluster given by address or
client is left running and its configuration is not touched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import pickle
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import cloudpickle

from amorsize import InvalidArgumentError
from amorsize.backends import ChunkDone, ChunkLost, ChunkSpec, ChunkTask
from amorsize_dask._cluster import (
    close_quietly,
    connect,
    crash_detail,
    describe_task_error,
    repair_cluster,
)
from amorsize_dask._logs import restore_distributed_logs
from amorsize_dask._remote import TIMEOUT_EXIT_CODE, run_task
from amorsize_dask.errors import DaskBackendError

#: How long one wait on the futures lasts before the pool checks timeout reports
#: and the cluster's health again.
POLL_SECONDS = 0.25
#: Seconds allowed to fetch one finished chunk's result from its worker.
RESULT_TIMEOUT_SECONDS = 60.0
#: Seconds allowed to connect to a scheduler given by address.
CONNECT_TIMEOUT_SECONDS = 30.0
#: Scheduler RPCs on the rare paths (timeout reports, cancelling, worker counts).
RPC_TIMEOUT_SECONDS = 10.0
#: Seconds between two checks that the cluster still has workers, while chunks wait.
HEALTH_CHECK_SECONDS = 2.0
#: How long the cluster may have no worker at all while chunks wait, before the run fails.
NO_WORKERS_TIMEOUT_SECONDS = 60.0
#: Extra runs of a one-item chunk lost to a crash before it is reported (see module doc).
SINGLE_ITEM_CONFIRMATIONS = 1

log = logging.getLogger(__name__)


class DaskBackend:
    """Run chunks on a Dask distributed cluster.

    ``DaskBackend()`` (or ``backend="dask"``) starts a local cluster on loopback for
    the run and closes it at the end; ``DaskBackend(address="tcp://host:8786")`` or
    ``DaskBackend(client=client)`` uses an existing cluster and leaves it running.
    Workers need ``amorsize`` and ``amorsize-dask`` installed, and a nanny (the
    default of ``dask worker``) so that a worker ended by a crash or a timeout
    comes back.
    """

    name = "dask"
    chooses_width = True  # n_jobs=None: as many chunks at once as the cluster has threads

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        client: Any = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        if address is not None and client is not None:
            raise ValueError("DaskBackend takes an address or a client, not both")
        if address is not None and not isinstance(address, str):
            raise InvalidArgumentError(f"address={address!r} is not valid; expected a scheduler "
                                       "address such as 'tcp://host:8786'")
        self.address = address
        self.client = client
        if (isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float))
                or not 0 < connect_timeout < math.inf):
            raise InvalidArgumentError(f"connect_timeout={connect_timeout!r} is not valid; "
                                       "expected a finite number of seconds > 0")
        self.connect_timeout = float(connect_timeout)

    def open(
        self,
        spec: ChunkSpec,
        *,
        n_jobs: Optional[int],
        timeout: Optional[float],
        start_method: Optional[str],
    ) -> DaskPool:
        del start_method  # Dask workers are started by their nanny
        cluster, client, owns_client = connect(self.address, self.client, self.connect_timeout, n_jobs)
        try:
            return DaskPool(spec, client, timeout=timeout, cluster=cluster, owns_client=owns_client,
                            width=n_jobs)
        except BaseException:
            try:
                close_quietly(client if owns_client else None, cluster)
            finally:
                if cluster is not None:
                    restore_distributed_logs()
            raise


class _InFlight:
    __slots__ = ("future", "runs", "task")

    def __init__(self, future: Any, task: ChunkTask, runs: int) -> None:
        self.future, self.task, self.runs = future, task, runs


class DaskPool:
    """The pool protocol of :mod:`amorsize.backends` over a Dask client; see the module doc."""

    def __init__(
        self,
        spec: ChunkSpec,
        client: Any,
        *,
        timeout: Optional[float],
        cluster: Any = None,
        owns_client: bool = False,
        width: Optional[int] = None,
    ) -> None:
        self._client, self._cluster, self._owns_client = client, cluster, owns_client
        self._spec = spec
        self._spec_bytes = cloudpickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        self._token = uuid.uuid4().hex
        self._topic = f"amorsize-timeouts-{self._token}"
        self._keys = itertools.count()
        self._timeout = timeout
        self._in_flight: Dict[str, _InFlight] = {}
        self._reports: Dict[str, Dict[str, Any]] = {}
        self._reports_lock = threading.Lock()
        self._no_workers_since: Optional[float] = None
        self._last_health_check = time.monotonic()
        #: Workers our own cluster should have (it is repaired back to this width).
        self._width: int = len(cluster.worker_spec) if cluster is not None else (width or 0)
        #: Chunks in flight at once: one per worker thread, as the cluster is now.
        threads = self._threads()
        if not threads:  # a cluster between worker restarts, or still starting
            try:
                client.wait_for_workers(1, timeout=NO_WORKERS_TIMEOUT_SECONDS)
            except Exception as exc:
                raise DaskBackendError(
                    f"the Dask cluster has no worker (waited {NO_WORKERS_TIMEOUT_SECONDS:.0f}s)"
                ) from exc
            threads = self._threads()
        self.size = max(1, threads)
        if timeout is not None:
            client.subscribe_topic(self._topic, self._on_report)

    # -- the pool protocol -----------------------------------------------------

    def idle_count(self) -> int:
        return max(0, self.size - len(self._in_flight))

    def busy_count(self) -> int:
        return len(self._in_flight)

    def submit(self, task: ChunkTask, runs: int = 1) -> None:
        """Send ``task`` as one Dask task under a fresh key."""
        try:
            task_bytes = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            task_bytes = cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        key = f"amorsize-{self._token}-{next(self._keys)}"
        future = self._client.submit(
            run_task, self._spec_bytes, self._token, task_bytes,
            (task.chunk_id, task.start, len(task.items)), self._spec.function_name,
            self._spec.include_traceback, self._timeout, self._topic, key,
            key=key, pure=False, retries=0,
        )
        self._in_flight[key] = _InFlight(future, task, runs)

    def wait(self, timeout: Optional[float]) -> List[Any]:
        """Wait until chunks finish or are lost (or ``timeout`` passes); return their events.

        Each underlying wait lasts at most ``POLL_SECONDS``; between them the pool
        picks up timeout reports and checks that the cluster still has workers.
        """
        from distributed import wait as dask_wait

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._in_flight:
            events = self._reported_timeouts()
            if events:
                return events
            step = POLL_SECONDS
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            futures = [entry.future for entry in self._in_flight.values()]
            try:
                with self._client.as_current():  # never the user's default client
                    done, _ = dask_wait(futures, timeout=step, return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):
                done = set()
            except Exception:  # FuturesCancelledError: _collect reads each future's status
                done = {future for future in futures if future.status != "pending"}
                if not done:
                    raise
            self._check_workers()
            events = []
            for future in done:
                event = self._collect(future.key)
                if event is not None:
                    events.append(event)
            if events:
                return events
            if deadline is not None and time.monotonic() >= deadline:
                return []
        return []

    def close(self, *, kill: bool = False) -> None:
        """Release our futures; close the client and cluster only if we made them."""
        del kill  # futures are cancelled either way; a running task ends with its cluster
        futures = [entry.future for entry in self._in_flight.values()]
        self._in_flight.clear()
        try:
            if futures:
                self._client.sync(self._client._cancel, futures, callback_timeout=RPC_TIMEOUT_SECONDS)
            if self._timeout is not None:
                self._client.unsubscribe_topic(self._topic)
        except Exception as exc:  # the cluster may be gone already; closing goes on
            log.debug("amorsize-dask: cleanup before close failed: %r", exc)
        finally:
            try:
                close_quietly(self._client if self._owns_client else None, self._cluster)
            finally:
                if self._cluster is not None:  # routed by _cluster.connect
                    restore_distributed_logs()

    # -- events ----------------------------------------------------------------

    def _collect(self, key: str) -> Any:
        entry = self._in_flight.pop(key, None)
        if entry is None:
            return None
        future, task = entry.future, entry.task
        status = future.status
        try:
            if status == "finished":
                try:
                    data = future.result(timeout=RESULT_TIMEOUT_SECONDS)
                except Exception as exc:
                    return self._lost(entry, f"the result could not be fetched ({exc!r})", exc)
                return ChunkDone(task, pickle.loads(data))
            if status == "error":
                try:
                    error: Any = future.exception(timeout=RESULT_TIMEOUT_SECONDS)
                except Exception as exc:
                    error = exc
                report = self._report_for(key)
                if report is not None:
                    return self._timed_out(task, report)
                return self._lost(entry, describe_task_error(error), error)
            if self._client.status not in ("running", "connecting"):
                raise DaskBackendError(
                    f"lost the connection to the Dask scheduler ({self._client.status}); "
                    f"{len(self._in_flight) + 1} chunk(s) were in flight"
                )
            return self._lost(entry, f"the Dask task was {status}", None)
        finally:
            future.release()

    def _lost(self, entry: _InFlight, cause: str, error: Any) -> Any:
        if len(entry.task.items) == 1 and entry.runs <= SINGLE_ITEM_CONFIRMATIONS:
            self.submit(entry.task, runs=entry.runs + 1)
            return None
        detail = crash_detail(cause, error, own_cluster=self._cluster is not None)
        return ChunkLost(entry.task, None, "worker_crash", detail)

    def _timed_out(self, task: ChunkTask, report: Dict[str, Any]) -> ChunkLost:
        position = min(max(int(report.get("position", 0)), 0), len(task.items) - 1)
        detail: Dict[str, Any] = {
            "timeout_seconds": self._timeout, "pid": report.get("pid"), "exitcode": TIMEOUT_EXIT_CODE,
            "worker": report.get("worker"), "engine": "dask",
        }
        return ChunkLost(task, position, "timeout", detail)

    # -- timeout reports (pushed by the scheduler's event log) -----------------

    def _on_report(self, event: Any) -> None:
        _when, msg = event
        if isinstance(msg, dict) and "key" in msg:
            with self._reports_lock:
                self._reports[str(msg["key"])] = msg

    def _reported_timeouts(self) -> List[Any]:
        if not self._reports:
            return []
        events: List[Any] = []
        with self._reports_lock:
            keys = [key for key in self._reports if key in self._in_flight]
        for key in keys:
            entry = self._in_flight.pop(key)
            report = self._reports.pop(key)
            self._cancel(entry.future)
            events.append(self._timed_out(entry.task, report))
        return events

    def _report_for(self, key: str) -> Optional[Dict[str, Any]]:
        if self._timeout is None:
            return None
        with self._reports_lock:
            report = self._reports.pop(key, None)
        if report is not None:
            return report
        try:  # the push may lag behind the task's error: ask the scheduler
            found = self._client.sync(
                self._client.scheduler.events, topic=self._topic, callback_timeout=RPC_TIMEOUT_SECONDS
            )
        except Exception:
            return None
        for _when, msg in found:
            if isinstance(msg, dict) and msg.get("key") == key:
                return dict(msg)
        return None

    def _cancel(self, future: Any) -> None:
        try:
            self._client.sync(self._client._cancel, [future], callback_timeout=RPC_TIMEOUT_SECONDS)
        except Exception as exc:
            log.debug("amorsize-dask: cancelling %s failed: %r", future.key, exc)
        future.release()

    # -- cluster health --------------------------------------------------------

    def _threads(self) -> int:
        try:
            info = self._client.sync(
                self._client.scheduler.ncores, callback_timeout=RPC_TIMEOUT_SECONDS
            )
        except Exception as exc:
            raise DaskBackendError(f"cannot reach the Dask scheduler: {exc!r}") from exc
        return int(sum(info.values()))

    def _check_workers(self) -> None:
        now = time.monotonic()
        if now - self._last_health_check < HEALTH_CHECK_SECONDS:
            return
        self._last_health_check = now
        if self._cluster is not None:
            repair_cluster(self._cluster, self._width)
        if self._client.status not in ("running", "connecting"):
            raise DaskBackendError(f"lost the connection to the Dask scheduler ({self._client.status})")
        threads = self._threads()
        if threads:
            self._no_workers_since = None
            if self._cluster is None:  # someone else's cluster may grow while we run
                self.size = max(self.size, threads)
            return
        if self._no_workers_since is None:
            self._no_workers_since = now
        elif now - self._no_workers_since > NO_WORKERS_TIMEOUT_SECONDS:
            raise DaskBackendError(
                f"the Dask cluster has had no worker for {NO_WORKERS_TIMEOUT_SECONDS:.0f}s while "
                f"{len(self._in_flight)} chunk(s) waited"
            )

