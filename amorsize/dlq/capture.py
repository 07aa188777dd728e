"""The capture hook: a picklable wrapper that runs a function and records its failures.

``SharedDeadLetterQueue.capture(func)`` returns a :class:`CapturedFunction`.
Hand it to any process pool (``multiprocessing.Pool``, ``concurrent.futures``,
loky, amorsize's own ``execute()``) in place of ``func``. In the worker it runs
``func(item)`` under the retry policy; an item that still fails is sent to the
shared queue's manager *before* the hook returns, and its result position holds
a falsy :class:`~amorsize.Failure` instead of an exception, so the pool never
aborts and results stay aligned with inputs.

The success path makes no call to the manager: a worker connects on its first
failure and keeps that connection for the rest of its life (the per-process
connection cache below; :func:`forget_connections` drops it when a queue closes).

This module never imports :mod:`amorsize.dlq.shared`: it reaches the manager
through :mod:`amorsize.dlq._manager` and :mod:`amorsize.dlq.ingest`, which the
shared queue imports too, so ``shared -> capture`` is the only edge between them.
"""

from __future__ import annotations

import os
import pickle
import threading
from multiprocessing import AuthenticationError
from typing import Any, Callable, Dict, Optional, Tuple

import cloudpickle

from amorsize._validate import check_callable
from amorsize.dlq._manager import DEFAULT_CALL_TIMEOUT_SECONDS, connect_proxy
from amorsize.dlq._plainline import failure_line, meta_text
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.inbox import SegmentWriter
from amorsize.dlq.ingest import IngestError
from amorsize.dlq.ingest_client import IngestClient
from amorsize.dlq.records import RECORD_VERSION, encode_entry
from amorsize.errors import InvalidTypeError, SharedDLQUnavailableError, TaskFailedError
from amorsize.failure import Failure, failure_entry, failure_of, function_name, new_failure, worker_metadata
from amorsize.retry import call_with_retry
from amorsize.serialization import dumps

#: Loaded (function, retry policy) pairs cached per process, keyed by their cloudpickle
#: bytes, so a pool that unpickles the hook once per task does not unpickle them each time.
_FUNCTION_CACHE_SIZE = 64

_functions: Dict[bytes, Tuple[Callable[[Any], Any], Any]] = {}
_clients: Dict[Any, Any] = {}
_lanes: Dict[Any, IngestClient] = {}
_appenders: Dict[Any, SegmentWriter] = {}
_metas: Dict[Tuple[int, str], Optional[str]] = {}
_clients_lock = threading.Lock()


def _forget_parent_state() -> None:
    # A forked child must open its own connections: sharing a socket with the parent
    # would interleave their messages. It closes its copies of the parent's inbox files
    # (the parent's lock stays), or the manager would wait for the child to remove them.
    _clients.clear()
    _lanes.clear()
    _metas.clear()  # they hold the pid
    for appender in _appenders.values():
        appender.forget()
    _appenders.clear()


os.register_at_fork(after_in_child=_forget_parent_state)


def picklable_error(error: BaseException, entry: DLQEntry) -> BaseException:
    """``error`` if it survives a pickle round trip, else a TaskFailedError carrying its text.

    A pool that cannot unpickle a worker's exception hangs or dies; never hand it one.
    """
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return TaskFailedError(entry.error_type, entry.error_message, entry.traceback)


def _load_function(data: bytes) -> Tuple[Callable[[Any], Any], Any]:
    loaded = _functions.get(data)
    if loaded is None:
        loaded = cloudpickle.loads(data)
        if len(_functions) >= _FUNCTION_CACHE_SIZE:
            _functions.clear()
        _functions[data] = loaded
    return loaded


def _client(address: Any, authkey: bytes, timeout: float) -> Any:
    return _kept(_clients, address, connect_proxy, address, authkey, timeout)


def _kept(table: Dict[Any, Any], address: Any, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """This process's kept connection to ``address`` in ``table``, ``make(*args, **kwargs)``
    on first use (a factory and its arguments, not a closure: every failure asks)."""
    connection = table.get(address)  # the usual case, without the lock (a dict read is atomic)
    if connection is not None:
        return connection
    with _clients_lock:
        connection = table.get(address)
        if connection is None:
            connection = table[address] = make(*args, **kwargs)
        return connection


def forget_connections(*addresses: Any) -> None:
    """Close this process's kept connections to these addresses (a queue was closed)."""
    with _clients_lock:
        lanes = [_lanes.pop(a) for a in addresses if a in _lanes]
        appenders = [_appenders.pop(a) for a in addresses if a in _appenders]
        for address in addresses:
            _clients.pop(address, None)
    for lane in lanes:
        lane.close()
    for appender in appenders:
        appender.close()


def _worker_meta(attempts: int, function: str) -> str | None:
    """The encoded metadata of this process's failures of ``function`` (kept: they repeat)."""
    key = (attempts, function)
    text = _metas.get(key)
    if text is None and key not in _metas:
        if len(_metas) >= _FUNCTION_CACHE_SIZE:
            _metas.clear()
        text = _metas[key] = meta_text(worker_metadata(attempts, function))
    return text


def _lane(address: Any, authkey: bytes, timeout: float) -> IngestClient:
    return _kept(_lanes, address, IngestClient, address, authkey, timeout)


def _appender(address: Any, journal: Tuple[str, str]) -> SegmentWriter:
    return _kept(_appenders, address, SegmentWriter, journal[0], fsync=journal[1])


class CapturedFunction:
    """A picklable wrapper of ``func`` that records final failures in a shared DLQ.

    Calling it with an item returns ``func(item)``, or, after the retry policy
    gives up, a falsy :class:`~amorsize.Failure` naming the DLQ entry (or raises
    the original error after recording it, with ``reraise=True``).

    Raises:
        SharedDLQUnavailableError: the manager is gone; carries the unrecorded failure
            in ``.failure`` and names the address.
    """

    def __init__(
        self,
        func: Callable[[Any], Any],
        *,
        retry: Any = None,
        address: Any,
        authkey: bytes,
        include_traceback: bool = True,
        reraise: bool = False,
        ingest_address: Any = None,
        timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS,
        rate_limit: Any = None,
        journal: Tuple[str, str] | None = None,
    ) -> None:
        check_callable("func", func)
        if rate_limit is not None and not callable(getattr(rate_limit, "acquire", None)):
            raise InvalidTypeError(f"rate_limit={rate_limit!r} is not valid; expected a RateLimit or None")
        if retry is not None and not callable(getattr(retry, "run", None)):
            raise InvalidTypeError(f"retry={retry!r} is not valid; expected a RetryPolicy or None")
        # The function and the policy travel in ONE cloudpickle payload: a class both
        # refer to (an exception in retry_on, defined in __main__ or locally, so carried
        # by value) must come out as one class in the worker, or retry_on never matches.
        self._func_bytes = dumps((func, retry))
        self._loaded: Tuple[Callable[[Any], Any], Any] | None = (func, retry)
        self.function_name = function_name(func)
        self.address = address
        self._authkey = authkey
        self.include_traceback = include_traceback
        self.reraise = reraise
        #: The manager's fast lane for failures (None: record through a proxy call).
        self.ingest_address = ingest_address
        #: Seconds a call to the manager may take before the hook gives up.
        self.timeout = timeout
        #: A :class:`~amorsize.RateLimit` every attempt waits for, across the pool's processes.
        self.rate_limit = rate_limit
        #: (directory, fsync) of the journal the hook appends a failure to itself, for
        #: the manager to read there (None: the manager writes it, the hook waits).
        self.journal = journal

    def __getstate__(self) -> Dict[str, Any]:
        # Every field travels as it is, except the loaded function: a worker loads it from
        # ``_func_bytes`` on first call (and keeps it in its per-process cache).
        return dict(self.__dict__, _loaded=None)

    def __repr__(self) -> str:
        return f"<captured {self.function_name} → shared DLQ at {self.address!r}>"

    @property
    def retry(self) -> Any:
        """The :class:`~amorsize.RetryPolicy` (or None) each call runs under."""
        loaded = self._loaded
        if loaded is None:
            loaded = self._loaded = _load_function(self._func_bytes)
        return loaded[1]

    def __call__(self, item: Any) -> Any:
        loaded = self._loaded
        if loaded is None:
            loaded = self._loaded = _load_function(self._func_bytes)
        func, retry = loaded
        if retry is None and self.rate_limit is None and not self.reraise:
            # One attempt and nothing to wait for: call_with_retry's work without its
            # outcome record, so a success costs a call and a return.
            try:
                return func(item)
            except Exception as exc:
                return self._recorded(item, exc, 1)
        outcome = call_with_retry(func, item, retry, limit=self.rate_limit)
        if outcome.ok:
            return outcome.value
        error, attempts = outcome.error, outcome.attempts
        assert error is not None
        # The error's traceback holds call_with_retry's frame, whose f_back is this one:
        # ending with the error in a local makes a cycle only the collector frees, with
        # the failed call's frames and all they hold (a collection every ~15 failures).
        del outcome
        try:
            if not self.reraise:
                return self._recorded(item, error, attempts)
            entry = failure_entry(item, error, attempts=attempts, function=self.function_name,
                                  include_traceback=self.include_traceback)
            self.record(entry)
            raise picklable_error(error, entry) from None
        finally:
            del error

    def _recorded(self, item: Any, error: BaseException, attempts: int) -> Failure:
        """Record ``item``'s final failure; its Failure for the result list."""
        if self.journal is not None:
            quick = self._quick_failure(item, error, attempts)
            if quick is not None:
                return quick
        entry = failure_entry(item, error, attempts=attempts, function=self.function_name,
                              include_traceback=self.include_traceback)
        self.record(entry)
        return failure_of(entry)

    def _quick_failure(self, item: Any, error: BaseException, attempts: int) -> Failure | None:
        """The usual failure (a small int or ASCII str item) written to the inbox with no
        entry built (:func:`amorsize.dlq._plainline.failure_line`); None to take the
        general path, which also reports anything unusual (no lane, a closed queue)."""
        assert self.journal is not None
        meta = _worker_meta(attempts, self.function_name)
        built = meta and failure_line(item, error, max(0, attempts - 1), meta,
                                      self.include_traceback, RECORD_VERSION)
        if not built:
            return None
        line, entry_id, error_type, message = built
        try:
            if not self._append_line(line, _lane(self.ingest_address, self._authkey, self.timeout)):
                return None
        except Exception:  # the general path tries again and says what went wrong
            return None
        return new_failure(entry_id, error_type, message)

    def record(self, entry: DLQEntry) -> None:
        """Send ``entry`` to the shared queue now: it is in the journal when this returns."""
        if self.ingest_address is None:
            self._record_by_proxy(entry)
            return
        try:
            lane = _lane(self.ingest_address, self._authkey, self.timeout)
        except AuthenticationError as exc:
            raise self._unavailable(
                entry, f"the manager refused the connection: wrong authkey ({exc})"
            ) from None
        except (OSError, EOFError, IngestError) as exc:
            raise self._unavailable(
                entry, f"no shared DLQ is reachable ({type(exc).__name__}: {exc}); the manager is gone"
            ) from None
        try:
            if self.journal is None or not self._append(entry, lane):
                lane.send([entry])
        except (EOFError, OSError) as exc:
            # The connection this worker kept broke (the manager died or was closed), or
            # the manager did not answer in time (stopped): drop it, a late ack must
            # never be read as the answer to the next failure.
            with _clients_lock:
                if _lanes.get(self.ingest_address) is lane:
                    del _lanes[self.ingest_address]
            lane.close()
            raise self._unavailable(
                entry, f"{type(exc).__name__}: {exc}; the manager is gone"
            ) from None
        except IngestError as exc:
            raise self._unavailable(entry, str(exc)) from None

    def _append(self, entry: DLQEntry, lane: IngestClient) -> bool:
        """Append ``entry`` to this process's file in the queue's inbox; the manager
        moves it into the journal (:mod:`amorsize.dlq.inbox`).

        Returns False when this process could not append it (a full disk, say): the
        manager writes it then, and keeps it in memory until it can, as for any add.
        """
        return self._append_line(encode_entry(entry, pickle_everything=False), lane)

    def _append_line(self, line: bytes, lane: IngestClient) -> bool:
        """:meth:`_append` for a line already encoded; raises EOFError if the queue closed."""
        assert self.journal is not None
        if lane.gone():  # a closed queue's inbox takes no more lines
            raise EOFError("the DLQ manager closed the connection")
        try:
            _appender(self.ingest_address, self.journal).append_line(line)
        except OSError:
            return False
        return True

    def _record_by_proxy(self, entry: DLQEntry) -> None:
        try:
            _client(self.address, self._authkey, self.timeout).call("_store", [entry])
        except SharedDLQUnavailableError as exc:
            # Connecting failed (nothing listens, or the authkey was refused).
            raise self._unavailable(entry, str(exc)) from None
        except (EOFError, OSError) as exc:
            # The connection this worker kept broke: the manager died or was closed.
            with _clients_lock:
                _clients.pop(self.address, None)
            raise self._unavailable(
                entry, f"{type(exc).__name__}: {exc}; the manager is gone"
            ) from None

    def _unavailable(self, entry: DLQEntry, cause: str) -> SharedDLQUnavailableError:
        # Whichever way the manager was lost, the message names the address, the
        # cause and the failure itself, so nothing about the failed item is lost.
        return SharedDLQUnavailableError(
            f"could not record a failure of {self.function_name} in the shared DLQ at "
            f"{self.address!r} ({cause}). The failure: {entry.error_type}: {entry.error_message}",
            self.address,
            failure=entry,
        )
