"""SharedDeadLetterQueue: one dead letter queue for many processes.

A ``multiprocessing`` manager server process owns a single
:class:`DeadLetterQueue`, so the journal has one writer. Pool workers reach it
through the executor hook (:meth:`SharedDeadLetterQueue.capture`); any other
process on the machine reaches it with :meth:`SharedDeadLetterQueue.connect`.

Items travel pre-pickled with cloudpickle (:class:`~amorsize.serialization.PickledValue`):
the server stores and journals the bytes without unpickling them, so it never
imports users' classes, and the reading side unpickles them. Payloads loaded
from disk are only unpickled when the policy allows pickle.

The server listens on a unix socket in a fresh 0700 temp directory (or a
loopback TCP address) and authenticates every connection with a random 32-byte
authkey. It exits when it is closed or when the process that started it dies.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import multiprocessing
import os
import secrets
import shutil
import tempfile
import threading
import time
from multiprocessing.managers import BaseManager, BaseProxy
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union, cast

from amorsize._validate import check_choice, invalid_value
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.dlq.ingest import IngestServer, ingest_address_for
from amorsize.dlq.journal import STORED_METADATA_KEY
from amorsize.dlq.policy import DLQPolicy
from amorsize.dlq.queue import DeadLetterQueue, TimeBound
from amorsize.errors import InvalidTypeError, SharedDLQUnavailableError
from amorsize.serialization import PickledValue, pack_for_transport, unpack_transported

Address = Union[str, Tuple[str, int]]

logger = logging.getLogger("amorsize.dlq")

#: How often the manager process checks that the process that started it is alive.
PARENT_WATCH_INTERVAL_SECONDS = 0.5
#: How long close() waits for the manager process to exit before terminating it.
SHUTDOWN_TIMEOUT_SECONDS = 5.0
AUTHKEY_BYTES = 32

_CONNECTION_ERRORS = (EOFError, ConnectionError, OSError, multiprocessing.AuthenticationError)


def pack_entry(entry: DLQEntry) -> DLQEntry:
    """A copy of ``entry`` whose item and metadata are safe to send to the manager."""
    return dataclasses.replace(
        entry, item=pack_for_transport(entry.item), metadata=pack_for_transport(entry.metadata)
    )


def unpack_entry(entry: DLQEntry) -> DLQEntry:
    """Inverse of :func:`pack_entry`, run by the reader."""
    metadata: Any = entry.metadata
    stored = metadata.get(STORED_METADATA_KEY) if isinstance(metadata, dict) else None
    if isinstance(stored, PickledValue) and len(metadata) == 1:
        metadata = stored  # read lazily from the journal by the manager: unpickle it here
    metadata = unpack_transported(metadata)
    if not isinstance(metadata, dict):
        metadata = {STORED_METADATA_KEY: metadata}
    return dataclasses.replace(entry, item=unpack_transported(entry.item), metadata=metadata)


class _ServerQueue:
    """What the manager process serves: a DeadLetterQueue behind transport-friendly methods."""

    def __init__(self, policy: DLQPolicy) -> None:
        self.queue = DeadLetterQueue(policy, _lazy_pickle=True)

    def policy(self) -> DLQPolicy:
        return self.queue.policy

    def add_entries(self, entries: List[DLQEntry]) -> int:
        return self.queue.extend(entries)

    def ingest_address(self) -> Optional[Address]:
        return _ingest_address

    def entries(self) -> List[DLQEntry]:
        return self.queue.get_entries()

    def size(self) -> int:
        return self.queue.size()

    def clear(self) -> int:
        return self.queue.clear()

    def save(self, path: Optional[str]) -> str:
        return self.queue.save(path)

    def load(self, path: Optional[str]) -> int:
        return self.queue.load(path)

    def summary(self) -> Dict[str, Any]:
        return self.queue.get_summary()

    def select(self, error_type: Any, reason: Any, since: Any, until: Any) -> List[DLQEntry]:
        return self.queue.filter(error_type=error_type, reason=reason, since=since, until=until)

    def update(self, entries: List[DLQEntry], remove_ids: List[str]) -> int:
        return self.queue.update(entries, remove_ids)

    def flush(self) -> None:
        self.queue.flush()

    def close(self) -> None:
        self.queue.close()


class _QueueProxy(BaseProxy):
    _exposed_ = (
        "policy", "add_entries", "ingest_address", "entries", "size", "clear", "save", "load",
        "summary", "select", "update", "flush", "close",
    )

    def call(self, name: str, *args: Any) -> Any:
        return self._callmethod(name, args)


_server_queue: Optional[_ServerQueue] = None
_ingest_address: Optional[Address] = None


def _get_server_queue() -> _ServerQueue:
    assert _server_queue is not None, "the DLQ manager was started without its initializer"
    return _server_queue


def _init_server(
    policy: DLQPolicy,
    socket_dir: Optional[str] = None,
    owner_pid: int = 0,
    address: Optional[Address] = None,
    authkey: Optional[bytes] = None,
) -> None:
    """Runs in the manager process before it serves: builds the queue, opens the
    workers' fast lane (:mod:`amorsize.dlq.ingest`) next to ``address``, and watches
    the owner.

    ``owner_pid`` is the pid of the process that started us, passed in rather than read
    with ``getppid()`` here, so an owner that died while we were starting is noticed too.
    """
    global _server_queue, _ingest_address
    _server_queue = _ServerQueue(policy)
    if address is not None and authkey is not None:
        try:
            lane = IngestServer(ingest_address_for(address), authkey, _server_queue.add_entries)
        except OSError as exc:  # hooks fall back to proxy calls
            logger.warning("DLQ manager: no fast lane for workers (%s: %s)", type(exc).__name__, exc)
        else:
            lane.start()
            _ingest_address = lane.address
    threading.Thread(
        target=_watch_parent, args=(owner_pid or os.getppid(), _server_queue, socket_dir),
        name="amorsize-parent-watch", daemon=True,
    ).start()


def _watch_parent(parent_pid: int, served: _ServerQueue, socket_dir: Optional[str]) -> None:
    # The process that started us died without closing us: flush, remove the private
    # socket directory it would have removed, then leave no orphan.
    while os.getppid() == parent_pid:
        time.sleep(PARENT_WATCH_INTERVAL_SECONDS)
    try:
        served.close()
    finally:
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
        os._exit(0)


class _DLQManager(BaseManager):
    pass


_DLQManager.register("get_queue", callable=_get_server_queue, proxytype=_QueueProxy)


def _check_address(address: Any) -> Address:
    if isinstance(address, (str, os.PathLike)):
        return os.fspath(address)
    if isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int):
        host = address[0]
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return (host, address[1])
    raise invalid_value(
        "address", address, "None (a private unix socket), a unix socket path, or a loopback "
        "(host, port) such as ('127.0.0.1', 0)"
    )


def connect_proxy(address: Address, authkey: bytes) -> _QueueProxy:
    """Connect to a running shared queue's manager and return a proxy to its queue.

    Raises:
        SharedDLQUnavailableError: nothing listens at ``address``, or the authkey was refused.
    """
    manager = _DLQManager(address=address, authkey=authkey)
    try:
        manager.connect()
        return manager.get_queue()  # type: ignore[attr-defined]
    except multiprocessing.AuthenticationError as exc:
        raise SharedDLQUnavailableError(
            f"the shared DLQ at {address!r} refused the connection: wrong authkey ({exc})", address
        ) from exc
    except _CONNECTION_ERRORS as exc:
        raise SharedDLQUnavailableError(
            f"no shared DLQ is reachable at {address!r} ({type(exc).__name__}: {exc}); "
            "is the SharedDeadLetterQueue that owns it still open?",
            address,
        ) from exc


class SharedDeadLetterQueue:
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
    """

    def __init__(
        self,
        policy: Optional[DLQPolicy] = None,
        *,
        address: Optional[Address] = None,
        authkey: Optional[bytes] = None,
        start_method: Optional[str] = None,
    ) -> None:
        if policy is None:
            policy = DLQPolicy()
        elif not isinstance(policy, DLQPolicy):
            raise InvalidTypeError(f"policy={policy!r} is not valid; expected a DLQPolicy or None")
        if authkey is not None and not isinstance(authkey, bytes):
            raise InvalidTypeError(f"authkey={authkey!r} is not valid; expected bytes or None")
        self.policy = policy
        self._socket_dir: Optional[str] = None
        if address is None:
            self._socket_dir = tempfile.mkdtemp(prefix="amorsize-dlq-")  # mode 0700
            address = os.path.join(self._socket_dir, "dlq.sock")
        address = _check_address(address)
        self._authkey = authkey if authkey is not None else secrets.token_bytes(AUTHKEY_BYTES)
        ctx = multiprocessing.get_context(start_method)
        self._manager: Optional[_DLQManager] = _DLQManager(
            address=address, authkey=self._authkey, ctx=ctx
        )
        try:
            self._manager.start(
                initializer=_init_server,
                initargs=(policy, self._socket_dir, os.getpid(), address, self._authkey),
            )
        except BaseException:
            self._remove_socket_dir()
            raise
        self._address: Address = cast(Address, self._manager.address)
        self._proxy: _QueueProxy = self._manager.get_queue()  # type: ignore[attr-defined]
        self._closed = False
        self._ingest_address: Optional[Address] = self._call("ingest_address")

    @classmethod
    def connect(cls, address: Address, authkey: bytes) -> SharedDeadLetterQueue:
        """A handle on a queue another process owns; same API, does not own the server.

        Raises:
            SharedDLQUnavailableError: nothing listens at ``address`` or the authkey is wrong.
        """
        if not isinstance(authkey, bytes):
            raise InvalidTypeError(f"authkey={authkey!r} is not valid; expected bytes")
        handle = cls.__new__(cls)
        handle._manager = None
        handle._socket_dir = None
        handle._address = address
        handle._authkey = authkey
        handle._proxy = connect_proxy(address, authkey)
        handle._closed = False
        handle.policy = handle._call("policy")
        handle._ingest_address = handle._call("ingest_address")
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

    def _call(self, name: str, *args: Any) -> Any:
        if self._closed:
            raise SharedDLQUnavailableError(
                f"this SharedDeadLetterQueue handle is closed (address {self._address!r})",
                self._address,
            )
        try:
            return self._proxy.call(name, *args)
        except _CONNECTION_ERRORS as exc:
            raise SharedDLQUnavailableError(
                f"the shared DLQ manager at {self._address!r} stopped answering "
                f"({type(exc).__name__}: {exc}); it was closed or its process died",
                self._address,
            ) from exc

    def capture(
        self, func: Callable[[Any], Any], retry: Any = None, *, reraise: bool = False
    ) -> Any:
        """Wrap ``func`` into a picklable hook for any process pool.

        See :class:`amorsize.hook.CapturedFunction`.
        """
        from amorsize.hook import CapturedFunction

        return CapturedFunction(
            func,
            retry=retry,
            address=self._address,
            authkey=self._authkey,
            include_traceback=self.policy.include_traceback,
            reraise=reraise,
            ingest_address=self._ingest_address,
        )

    def close(self) -> None:
        """Flush the journal and stop the manager process (a connected handle just detaches)."""
        if self._closed:
            return
        try:
            if self._manager is not None:
                try:
                    self._proxy.call("close")
                except _CONNECTION_ERRORS:
                    pass  # already dead: nothing left to flush
        finally:
            self._closed = True
            from amorsize.hook import forget_connections

            forget_connections(self._address, self._ingest_address)
            if self._manager is not None:
                self._manager.shutdown()
                self._manager = None
            self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self) -> SharedDeadLetterQueue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"SharedDeadLetterQueue({state}, address={self._address!r})"

    # -- the DeadLetterQueue API ----------------------------------------------

    def add(
        self,
        item: Any,
        error: BaseException,
        retry_count: int = 0,
        metadata: Optional[Dict[str, Any]] = None,
        *,
        reason: str = "exception",
    ) -> DLQEntry:
        """Record a failure; see :meth:`DeadLetterQueue.add`."""
        entry = DLQEntry.from_exception(
            item, error, retry_count=retry_count, metadata=metadata,
            include_traceback=self.policy.include_traceback, reason=reason,
        )
        self._call("add_entries", [pack_entry(entry)])
        return entry

    def add_entry(self, entry: DLQEntry) -> DLQEntry:
        """Add a ready-made entry."""
        self.extend([entry])
        return entry

    def extend(self, entries: Iterable[DLQEntry]) -> int:
        """Add a batch of entries in one round trip. Returns how many were added."""
        batch = [pack_entry(_checked(e)) for e in entries]
        return int(self._call("add_entries", batch)) if batch else 0

    def get_entries(self) -> List[DLQEntry]:
        """A copy of the entries, in insertion order."""
        return [unpack_entry(e) for e in self._call("entries")]

    def size(self) -> int:
        """How many entries the queue holds."""
        return int(self._call("size"))

    def __len__(self) -> int:
        return self.size()

    def clear(self) -> int:
        """Remove every entry. Returns how many were removed."""
        return int(self._call("clear"))

    def save(self, path: Optional[Union[str, os.PathLike[str]]] = None) -> str:
        """Write every entry to ``path`` (written by the manager process). Returns the path."""
        return str(self._call("save", None if path is None else os.path.abspath(path)))

    def load(self, path: Optional[Union[str, os.PathLike[str]]] = None) -> int:
        """Merge the entries stored at ``path`` into the queue. Returns the count read."""
        return int(self._call("load", None if path is None else os.path.abspath(path)))

    def get_summary(self) -> Dict[str, Any]:
        """See :meth:`DeadLetterQueue.get_summary`."""
        return dict(self._call("summary"))

    def filter(
        self,
        error_type: Optional[str] = None,
        reason: Optional[str] = None,
        since: TimeBound = None,
        until: TimeBound = None,
        predicate: Optional[Callable[[DLQEntry], bool]] = None,
    ) -> List[DLQEntry]:
        """See :meth:`DeadLetterQueue.filter`; ``predicate`` runs here, in the caller."""
        if predicate is not None and not callable(predicate):
            raise invalid_value("predicate", predicate, "a callable taking a DLQEntry, or None")
        if reason is not None:
            check_choice("reason", reason, REASONS)
        selected = [unpack_entry(e) for e in self._call("select", error_type, reason, since, until)]
        return [e for e in selected if predicate(e)] if predicate is not None else selected

    def remove(self, entry_ids: Iterable[str]) -> int:
        """Remove the entries with these ids. Returns how many."""
        return self.update(remove_ids=entry_ids)

    def update(self, entries: Iterable[DLQEntry] = (), remove_ids: Iterable[str] = ()) -> int:
        """Atomically replace ``entries`` and remove ``remove_ids``; see :meth:`DeadLetterQueue.update`."""
        if isinstance(remove_ids, str):
            raise invalid_value("remove_ids", remove_ids, "an iterable of entry ids, not a str")
        packed = [pack_entry(_checked(e)) for e in entries]
        return int(self._call("update", packed, list(remove_ids)))

    def flush(self) -> None:
        """Make every add durable on disk now."""
        self._call("flush")


def _checked(entry: Any) -> DLQEntry:
    if not isinstance(entry, DLQEntry):
        raise InvalidTypeError(f"entry={entry!r} is not valid; expected a DLQEntry")
    return entry

