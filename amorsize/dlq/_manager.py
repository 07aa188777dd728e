"""The manager process behind a SharedDeadLetterQueue: its server, its proxy, connecting.

```
 SharedDeadLetterQueue (parent)    manager process                     pool worker
 ──────────────────────────────    ───────────────                     ───────────
 QueueProxy.call("_store", ...) ─► _ServerQueue: a DeadLetterQueue ◄── capture hook:
                                    (lazy pickle), its journal,          ingest lane, or
                                    the ingest lane, a parent watch      connect_proxy()
```

The server object *is* a :class:`~amorsize.dlq.queue.DeadLetterQueue`: the
proxy calls the primitives of :class:`~amorsize.dlq.base.DeadLetterQueueBase`
on it, so every rule (pruning, journaling, filtering) has one implementation.
Entries cross the proxy packed (:func:`pack_entry`): the manager stores and
journals pickled items as bytes, never importing users' classes.

Both the shared queue and the capture hook import this module; neither imports
the other's side of the connection, so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import multiprocessing
import os
import shutil
import threading
import time
from multiprocessing import managers
from multiprocessing.managers import BaseManager, BaseProxy
from typing import Any, List, Sequence, Tuple, Union, cast

from amorsize._validate import invalid_value
from amorsize.dlq._deadline import timed_client
from amorsize.dlq.alerts import Alerter, NewEntryBuffer
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.ingest import IngestServer, JournalLine, ingest_address_for
from amorsize.dlq.policy import DLQPolicy
from amorsize.dlq.queue import DeadLetterQueue
from amorsize.dlq.records import STORED_METADATA_KEY
from amorsize.dlq.tail import TAIL_INTERVAL_SECONDS, TailedJournal, decoded
from amorsize.errors import SharedDLQUnavailableError
from amorsize.serialization import PickledValue, pack_for_transport, unpack_transported

Address = Union[str, Tuple[str, int]]

logger = logging.getLogger("amorsize.dlq")

#: How often the manager process checks that the process that started it is alive.
PARENT_WATCH_INTERVAL_SECONDS = 0.5

#: What a dead or unreachable manager raises on a proxy call or a connect (a call past
#: its deadline raises TimeoutError, an OSError).
CONNECTION_ERRORS = (EOFError, ConnectionError, OSError, multiprocessing.AuthenticationError)

#: Seconds every call to the manager may take, from the parent or a worker hook, unless
#: ``SharedDeadLetterQueue(timeout=...)`` says otherwise.
DEFAULT_CALL_TIMEOUT_SECONDS = 30.0


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


class _ServerQueue(DeadLetterQueue):
    """The queue the manager serves: a DeadLetterQueue plus what only a server knows.

    Workers' failures reach it as :class:`JournalLine` (the line a worker encoded,
    decoded on the first read): lines workers appended to the journal themselves,
    read from there (:mod:`amorsize.dlq.tail`) before every call that reads the
    queue, and lines sent through the lane, appended byte for byte.
    """

    def __init__(self, policy: DLQPolicy) -> None:
        super().__init__(policy, _lazy_pickle=True)
        self.lane_address: Address | None = None
        self._new_entries: NewEntryBuffer | None = None
        self._prune_due = False
        if self._journal is not None:
            loaded, self._journal = self._journal, TailedJournal(
                policy.path, fsync=policy.fsync, strict=policy.strict, take=self._take_lines,
                known=lambda entry_id: entry_id in self._entries or entry_id in self._dropped_on_disk)
            loaded.close()
            self._journal.start_at_end()  # the queue holds all of it now

    def catch_up(self) -> None:
        """Take in the lines workers appended (never called under a journal operation)."""
        journal = self._journal
        if not isinstance(journal, TailedJournal):
            return
        with self._lock:
            journal.tail()
            if self._prune_due:
                self._prune_due = False
                if self.policy.max_entries or self.policy.max_age_seconds is not None:
                    self._prune()

    def _take_lines(self, lines: List[JournalLine], replaced: bool) -> None:
        # Called by the journal under its lock: memory and alerts only; pruning (which
        # may compact, a journal operation of its own) waits for catch_up() or _store().
        dropped = self._dropped_on_disk
        if replaced:  # another process rewrote the file: only what we never had
            lines = [x for x in lines if x.entry_id not in self._entries and x.entry_id not in dropped]
        elif dropped:
            lines = [x for x in lines if x.entry_id not in dropped]
        if not lines:
            return
        batch: Sequence[Any] = decoded(lines) if self._needs_fields() else lines
        with self._lock:
            for entry in batch:
                self._entries[entry.entry_id] = entry
            self._prune_due = True
        if self._alerter is not None:
            self._alerter.notify(batch)

    def watch_new(self) -> None:
        """Keep the entries added from now on for :meth:`take_new` (the parent's alerts)."""
        if self._new_entries is None:
            self._new_entries = NewEntryBuffer()
            self._alerter = Alerter(self._new_entries)

    def take_new(self) -> Tuple[List[DLQEntry], int]:
        """The entries added since the last call (the newest, bounded) and their count."""
        self.catch_up()
        if self._new_entries is None:
            return [], 0
        entries, count = self._new_entries.take()
        # Lane entries are kept as their journal lines: decode the few the parent is sent.
        return [e.entry() if type(e) is JournalLine else e for e in entries], count

    def _needs_fields(self) -> bool:
        # Deduplication and retention read an entry's fields: decode those lines at once.
        return self._deduper is not None or self.policy.max_age_seconds is not None

    def store_lines(self, lines: List[JournalLine]) -> None:
        """The lane's store: lines go to the journal as they came (JSON format)."""
        if self._pickle_everything or self._needs_fields():
            self._store([line.entry() for line in lines])  # re-encoded for a pickle journal
        else:
            self._store(cast(Sequence[DLQEntry], lines))

    def _encode(self, entry: DLQEntry) -> bytes:
        if type(entry) is JournalLine:
            return entry.line
        return super()._encode(entry)

    def get_entries(self) -> List[DLQEntry]:
        self.catch_up()
        with self._lock:
            entries = self._entries
            for entry_id, entry in list(entries.items()):
                if type(entry) is JournalLine:
                    readable = decoded([entry])  # decoded once; the order is kept
                    if readable:
                        entries[entry_id] = readable[0]
                    else:  # (a WARNING said so) it stays in the journal, for whoever repairs it
                        del entries[entry_id]
                        self._corrupt_skipped += 1
            return list(entries.values())

    def flush(self) -> None:
        self.catch_up()
        with self._lock:
            super().flush()
            self._sync_others()

    def close(self) -> None:
        self.catch_up()
        try:
            super().close()
        finally:
            with self._lock:
                self._sync_others()

    def _sync_others(self) -> None:
        # Our journal syncs only its own appends; flush and close make every add durable.
        if isinstance(self._journal, TailedJournal):
            self._journal.sync_others()

    def get_policy(self) -> DLQPolicy:
        return self.policy

    def ingest_address(self) -> Address | None:
        return self.lane_address

    def worker_journal(self) -> Tuple[str, str] | None:
        """(absolute inbox path, fsync) when hooks write failures to files of their own.

        Only for a JSON journal without deduplication (a line a worker writes is then
        exactly what this queue would write) reached over a unix-socket lane (its open
        connection tells a worker the queue is open); see :mod:`amorsize.dlq.inbox`.
        """
        journal = self._journal
        if (isinstance(journal, TailedJournal) and journal.inbox is not None and not self._pickle_everything
                and self._deduper is None and isinstance(self.lane_address, str)):
            return (os.path.abspath(journal.inbox.path), self.policy.fsync)
        return None


def _caught_up(name: str) -> Any:
    method = getattr(DeadLetterQueue, name)

    @functools.wraps(method)
    def caught_up(self: _ServerQueue, *args: Any, **kwargs: Any) -> Any:
        self.catch_up()
        return method(self, *args, **kwargs)

    return caught_up


# Every other call that reads or changes the queue first takes what workers appended
# (so it sees every entry whose hook returned, and entries keep the journal's order).
for _name in ("_store", "_update", "size", "clear", "save", "load"):
    setattr(_ServerQueue, _name, _caught_up(_name))


class QueueProxy(BaseProxy):
    # The DeadLetterQueueBase primitives, plus what the proxy-backed queue reads directly.
    _exposed_ = (
        "_store", "_update", "_select", "get_entries", "size", "clear", "save", "load",
        "get_summary", "flush", "close", "get_policy", "ingest_address", "watch_new", "take_new",
        "worker_journal",
    )

    def call(self, name: str, *args: Any) -> Any:
        """Call ``name`` on the served queue, within the deadline set by :func:`with_deadline`.

        Raises:
            TimeoutError: no answer in time; the connection is dropped (a late answer
                must never be read as the answer to the next call).
        """
        proxy: Any = self  # BaseProxy's private attributes are not in the stubs
        try:
            conn = proxy._tls.connection
        except AttributeError:
            proxy._connect()
            conn = proxy._tls.connection
        try:
            conn.send((proxy._id, name, args, {}))
            kind, result = conn.recv()
        except BlockingIOError:  # SO_RCVTIMEO/SO_SNDTIMEO expired
            self.forget_connection()
            raise TimeoutError(f"the DLQ manager did not answer {name}() in time") from None
        except BaseException:
            self.forget_connection()
            raise
        if kind == "#RETURN":
            return result
        raise managers.convert_to_error(kind, result)  # type: ignore[attr-defined]

    def forget_connection(self) -> None:
        """Close this thread's connection; the next call opens a fresh one."""
        tls: Any = getattr(self, "_tls")  # noqa: B009 (not in the stubs)
        conn = getattr(tls, "connection", None)
        if conn is not None:
            del tls.connection
            conn.close()


def with_deadline(proxy: QueueProxy, timeout: float) -> QueueProxy:
    """``proxy``, its future connections opened by :func:`timed_client` with ``timeout``."""
    proxy._Client = functools.partial(timed_client, timeout=timeout)  # type: ignore[attr-defined]
    proxy.forget_connection()  # one made without a deadline is replaced on the next call
    return proxy


_server_queue: _ServerQueue | None = None


def _get_server_queue() -> _ServerQueue:
    assert _server_queue is not None, "the DLQ manager was started without its initializer"
    return _server_queue


def init_server(
    policy: DLQPolicy,
    socket_dir: str | None = None,
    owner_pid: int = 0,
    address: Address | None = None,
    authkey: bytes | None = None,
) -> None:
    """Runs in the manager process before it serves: builds the queue, opens the
    workers' fast lane (:mod:`amorsize.dlq.ingest`) next to ``address``, and watches
    the owner.

    ``owner_pid`` is the pid of the process that started us, passed in rather than read
    with ``getppid()`` here, so an owner that died while we were starting is noticed too.
    """
    global _server_queue
    served = _server_queue = _ServerQueue(policy)
    if address is not None and authkey is not None:
        try:
            lane = IngestServer(ingest_address_for(address), authkey, served.store_lines)
        except OSError as exc:  # hooks fall back to proxy calls
            logger.warning("DLQ manager: no fast lane for workers (%s: %s)", type(exc).__name__, exc)
        else:
            lane.start()
            served.lane_address = lane.address
    threading.Thread(
        target=_watch_parent, args=(owner_pid or os.getppid(), served, socket_dir),
        name="amorsize-parent-watch", daemon=True,
    ).start()
    threading.Thread(target=_follow_journal, args=(served,), name="amorsize-journal-tail",
                     daemon=True).start()


def _follow_journal(served: _ServerQueue) -> None:
    # With no reader for a while, memory, pruning and alerts still follow the workers.
    while True:
        time.sleep(TAIL_INTERVAL_SECONDS)
        try:
            served.catch_up()
        except Exception:  # a bad moment (a disk error): the next round tries again
            logger.exception("DLQ manager: could not read the workers' journal appends")


def _watch_parent(parent_pid: int, served: _ServerQueue, socket_dir: str | None) -> None:
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


class DLQManager(BaseManager):
    """The multiprocessing manager whose server holds one :class:`_ServerQueue`."""


DLQManager.register("get_queue", callable=_get_server_queue, proxytype=QueueProxy)


def check_address(address: Any) -> Address:
    """A unix socket path, or a loopback ``(host, port)``; anything else is refused."""
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


def connect_proxy(
    address: Address, authkey: bytes, timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS
) -> QueueProxy:
    """Connect to a running shared queue's manager and return a proxy to its queue.

    Every call through the proxy, and the connect itself, has a ``timeout`` deadline.

    Raises:
        SharedDLQUnavailableError: nothing listens at ``address``, the authkey was
            refused, or the manager did not answer in time.
    """
    manager = DLQManager(address=address, authkey=authkey)
    manager._Client = functools.partial(timed_client, timeout=timeout)  # type: ignore[attr-defined]
    try:
        manager.connect()
        return with_deadline(manager.get_queue(), timeout)  # type: ignore[attr-defined]
    except multiprocessing.AuthenticationError as exc:
        raise SharedDLQUnavailableError(
            f"the shared DLQ at {address!r} refused the connection: wrong authkey ({exc})", address
        ) from exc
    except CONNECTION_ERRORS as exc:
        raise SharedDLQUnavailableError(
            f"no shared DLQ is reachable at {address!r} ({type(exc).__name__}: {exc}); "
            "is the SharedDeadLetterQueue that owns it still open?",
            address,
        ) from exc
