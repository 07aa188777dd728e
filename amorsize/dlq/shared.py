"""SharedDeadLetterQueue: one dead letter queue for many processes.

A ``multiprocessing`` manager server process owns a single
:class:`DeadLetterQueue`: its memory, its policy, every removal. Pool workers add
to it through the executor hook (:meth:`SharedDeadLetterQueue.capture`), by
appending their failures to its journal themselves (the manager reads them from
there, :mod:`amorsize.dlq.tail`) or through its lane; any other process on the
machine reaches it with :meth:`SharedDeadLetterQueue.connect`.

Items travel pre-pickled with cloudpickle (:class:`~amorsize.serialization.PickledValue`):
the server stores and journals the bytes without unpickling them, so it never
imports users' classes, and the reading side unpickles them. Payloads loaded
from disk are only unpickled when the policy allows pickle.

The server listens on a unix socket in a fresh 0700 temp directory (or a
loopback TCP address) and authenticates every connection with a random 32-byte
authkey. It exits when it is closed or when the process that started it dies.
The server and its proxy live in :mod:`amorsize.dlq._manager`, the hook in
:mod:`amorsize.dlq.capture`; everything the two queues share, in
:mod:`amorsize.dlq.base`.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import secrets
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Sequence, Tuple, cast

from amorsize._validate import check_seconds, check_type
from amorsize.dlq._manager import (
    CONNECTION_ERRORS,
    DEFAULT_CALL_TIMEOUT_SECONDS,
    Address,
    DLQManager,
    QueueProxy,
    check_address,
    connect_proxy,
    init_server,
    pack_entry,
    timed_client,
    unpack_entry,
    with_deadline,
)
from amorsize.dlq.alerts import AlertCallback, Alerter, AlertWatch, make_alerter
from amorsize.dlq.base import DeadLetterQueueBase, PathArg, checked_policy
from amorsize.dlq.capture import CapturedFunction, forget_connections
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.journal import Journal
from amorsize.dlq.policy import DLQPolicy
from amorsize.errors import InvalidTypeError, SharedDLQUnavailableError

#: Random bytes of the authkey a queue makes when none is given.
AUTHKEY_BYTES = 32


class SharedDeadLetterQueue(DeadLetterQueueBase):
    """A dead letter queue held by a manager process and shared by many processes.

    It has the whole :class:`DeadLetterQueue` API, read and written from the parent,
    and :meth:`capture` wraps a function into a picklable hook that pool workers
    use to record failures into it.

    Args:
        policy: the :class:`DLQPolicy` of the queue the manager process holds.
        address: where the manager listens: None for a unix socket in a fresh 0700
            temp directory, a unix socket path, or a loopback ``(host, port)``.
        authkey: the key connections must present; None for 32 random bytes.
        start_method: multiprocessing start method of the manager process.
        timeout: seconds every call to the manager may take, from this process and
            from worker hooks (default 30); past it a
            :class:`~amorsize.SharedDLQUnavailableError` is raised (carrying the
            failure it could not record), as for a dead manager.
        on_add, alert_every_seconds: as for :class:`DeadLetterQueue`; ``on_add`` is called
            in this (the parent) process for entries added from anywhere, workers included,
            within :data:`~amorsize.dlq.alerts.SHARED_ALERT_POLL_SECONDS`.
    """

    def __init__(
        self,
        policy: DLQPolicy | None = None,
        *,
        address: Address | None = None,
        authkey: bytes | None = None,
        start_method: str | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS,
        on_add: AlertCallback | None = None,
        alert_every_seconds: float | None = None,
    ) -> None:
        policy = checked_policy(policy)
        alerter = make_alerter(on_add, alert_every_seconds)
        check_type("authkey", authkey, bytes, "bytes or None", optional=True)
        self._timeout = check_seconds("timeout", timeout, positive=True)
        if policy.auto_persist:  # refuse an unusable directory here, not in the manager
            Journal(policy.path, fsync=policy.fsync).prepare()
        self.policy = policy
        self._socket_dir: str | None = None
        if address is None:
            self._socket_dir = tempfile.mkdtemp(prefix="amorsize-dlq-")  # mode 0700
            address = os.path.join(self._socket_dir, "dlq.sock")
        address = check_address(address)
        self._authkey = authkey if authkey is not None else secrets.token_bytes(AUTHKEY_BYTES)
        ctx = multiprocessing.get_context(start_method)
        self._manager: DLQManager | None = DLQManager(
            address=address, authkey=self._authkey, ctx=ctx
        )
        try:
            self._manager.start(
                initializer=init_server,
                initargs=(policy, self._socket_dir, os.getpid(), address, self._authkey),
            )
        except BaseException:
            self._remove_socket_dir()
            raise
        self._address: Address = cast(Address, self._manager.address)
        self._manager._Client = functools.partial(  # type: ignore[attr-defined]
            timed_client, timeout=self._timeout
        )
        self._proxy: QueueProxy = with_deadline(
            self._manager.get_queue(), self._timeout  # type: ignore[attr-defined]
        )
        self._closed = False
        self._ingest_address: Address | None = self._call("ingest_address")
        self._journal_spec: Tuple[str, str] | None = self._call("worker_journal")
        self._alerts = self._watch_alerts(alerter)

    def _watch_alerts(self, alerter: Alerter | None) -> AlertWatch | None:
        # on_add runs here, in the parent: the manager only keeps what arrived for us.
        if alerter is None:
            return None
        self._call("watch_new")
        return AlertWatch(lambda: self._unpacked(self._proxy.call("take_new")), alerter)

    @staticmethod
    def _unpacked(taken: Any) -> Any:
        entries, count = taken
        return [unpack_entry(e) for e in entries], count

    @classmethod
    def connect(
        cls, address: Address, authkey: bytes, *, timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS
    ) -> SharedDeadLetterQueue:
        """A handle on a queue another process owns; same API, does not own the server.

        Raises:
            SharedDLQUnavailableError: nothing listens at ``address`` or the authkey is wrong.
        """
        check_type("authkey", authkey, bytes, "bytes")
        handle = cls.__new__(cls)
        handle._timeout = check_seconds("timeout", timeout, positive=True)
        handle._manager = None
        handle._socket_dir = None
        handle._address = address
        handle._authkey = authkey
        handle._proxy = connect_proxy(address, authkey, handle._timeout)
        handle._closed = False
        handle.policy = handle._call("get_policy")
        handle._ingest_address = handle._call("ingest_address")
        handle._journal_spec = handle._call("worker_journal")
        handle._alerts = None
        return handle

    # -- plumbing -------------------------------------------------------------

    @property
    def address(self) -> Address:
        """Where the manager listens (pass it to :meth:`connect`)."""
        return self._address

    @property
    def authkey(self) -> bytes:
        """The key a connecting process must present (keep it secret)."""
        return self._authkey

    def _check_open(self) -> None:
        if self._closed:
            raise SharedDLQUnavailableError(
                f"this SharedDeadLetterQueue handle is closed (address {self._address!r})",
                self._address,
            )

    def __reduce__(self) -> Any:
        # Pickling would fail deep inside multiprocessing ("Pickling an AuthenticationString
        # object is disallowed"): say what to send instead.
        raise InvalidTypeError(
            "a SharedDeadLetterQueue cannot be pickled to another process; give the pool "
            "dlq.capture(func), a picklable hook, or in the other process call "
            "SharedDeadLetterQueue.connect(address, authkey) with dlq.address and dlq.authkey"
        )

    def _call(self, name: str, *args: Any) -> Any:
        self._check_open()
        try:
            return self._proxy.call(name, *args)
        except CONNECTION_ERRORS as exc:
            raise SharedDLQUnavailableError(
                f"the shared DLQ manager at {self._address!r} stopped answering "
                f"({type(exc).__name__}: {exc}); it was closed, its process died, or it "
                f"did not answer within timeout={self._timeout} s",
                self._address,
            ) from exc

    def capture(
        self, func: Callable[[Any], Any], retry: Any = None, *, reraise: bool = False,
        rate_limit: Any = None,
    ) -> Any:
        """Wrap ``func`` into a picklable hook for any process pool.

        ``rate_limit``: a :class:`~amorsize.RateLimit` each attempt (retries too) waits
        for, shared by every process of the pool; a Retry-After pauses it for all.
        See :class:`amorsize.dlq.capture.CapturedFunction`.

        Raises:
            SharedDLQUnavailableError: this handle is closed.
        """
        self._check_open()
        return CapturedFunction(
            func,
            retry=retry,
            address=self._address,
            authkey=self._authkey,
            include_traceback=self.policy.include_traceback,
            reraise=reraise,
            ingest_address=self._ingest_address,
            timeout=self._timeout,
            rate_limit=rate_limit,
            journal=self._journal_spec,
        )

    def close(self) -> None:
        """Flush the journal and stop the manager process (a connected handle just detaches)."""
        if self._closed:
            return
        alerts = getattr(self, "_alerts", None)
        if alerts is not None:
            alerts.stop()
        try:
            # First this process's own hook connections: its file in the inbox is then
            # closed, so the manager's last read finishes it and removes the inbox.
            forget_connections(self._address, self._ingest_address)
            if self._manager is not None:
                try:
                    self._proxy.call("close")
                except CONNECTION_ERRORS:
                    pass  # already dead: nothing left to flush
        finally:
            self._closed = True
            if self._manager is not None:
                self._manager.shutdown()
                self._manager = None
            self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"SharedDeadLetterQueue({state}, address={self._address!r})"

    # -- the DeadLetterQueueBase primitives, served by the manager ------------------

    def _store(self, entries: Sequence[DLQEntry]) -> None:
        try:
            self._call("_store", [pack_entry(e) for e in entries])
        except SharedDLQUnavailableError as exc:
            # Hand back what could not be recorded, as a worker hook does.
            failure = entries[0] if len(entries) == 1 else list(entries)
            raise SharedDLQUnavailableError(str(exc), self._address, failure=failure) from exc

    def _update(self, entries: List[DLQEntry], remove_ids: List[str]) -> int:
        return int(self._call("_update", [pack_entry(e) for e in entries], remove_ids))

    def _select(
        self, error_type: str | None, reason: str | None, since: float | None,
        until: float | None,
    ) -> List[DLQEntry]:
        return [unpack_entry(e) for e in self._call("_select", error_type, reason, since, until)]

    def get_entries(self) -> List[DLQEntry]:
        """A copy of the entries, in insertion order."""
        return [unpack_entry(e) for e in self._call("get_entries")]

    def size(self) -> int:
        """How many entries the queue holds."""
        return int(self._call("size"))

    def clear(self) -> int:
        """Remove every entry. Returns how many were removed."""
        return int(self._call("clear"))

    def save(self, path: PathArg = None) -> str:
        """Write every entry to ``path`` (written by the manager process). Returns the path."""
        return str(self._call("save", None if path is None else os.path.abspath(path)))

    def load(self, path: PathArg = None) -> int:
        """Merge the entries stored at ``path`` into the queue. Returns the count read."""
        return int(self._call("load", None if path is None else os.path.abspath(path)))

    def get_summary(self) -> Dict[str, Any]:
        """See :meth:`DeadLetterQueue.get_summary`."""
        return dict(self._call("get_summary"))

    def flush(self) -> None:
        """Make every add durable on disk now."""
        self._call("flush")
