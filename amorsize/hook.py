"""The executor hook: a picklable wrapper that runs a function and records its failures.

``SharedDeadLetterQueue.capture(func)`` returns a :class:`CapturedFunction`.
Hand it to any process pool (``multiprocessing.Pool``, ``concurrent.futures``,
loky, amorsize's own ``execute()``) in place of ``func``. In the worker it runs
``func(item)`` under the retry policy; an item that still fails is sent to the
shared queue's manager *before* the hook returns, and its result position holds
a falsy :class:`~amorsize.Failure` instead of an exception, so the pool never
aborts and results stay aligned with inputs.

The success path makes no call to the manager: a worker connects on its first
failure and keeps that connection for the rest of its life.
"""

from __future__ import annotations

import builtins
import linecache
import os
import pickle
import socket
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import cloudpickle

from amorsize.dlq.entry import DLQEntry
from amorsize.errors import InvalidTypeError, SharedDLQUnavailableError, TaskFailedError
from amorsize.failure import Failure
from amorsize.serialization import UnserializableItem, dumps, pack_for_transport

#: Loaded functions cached per process, keyed by their cloudpickle bytes, so a pool
#: that unpickles the hook once per task does not unpickle the function each time.
_FUNCTION_CACHE_SIZE = 64

_functions: Dict[bytes, Callable[[Any], Any]] = {}
_clients: Dict[Any, Any] = {}
_clients_lock = threading.Lock()
_hostname: Optional[str] = None


def _forget_parent_state() -> None:
    # A forked child must open its own connections: sharing a socket with the parent
    # would interleave their messages.
    _clients.clear()


os.register_at_fork(after_in_child=_forget_parent_state)


def call_item(func: Callable[[Any], Any], item: Any, retry: Any) -> Tuple[bool, Any, int]:
    """Run ``func(item)`` under ``retry`` (a RetryPolicy or None for one attempt).

    Returns:
        ``(ok, value_or_error, attempts)``.
    """
    if retry is None:
        try:
            return True, func(item), 1
        except Exception as exc:
            return False, exc, 1
    outcome = retry.run(func, item)
    return outcome.ok, (outcome.value if outcome.ok else outcome.error), outcome.attempts


def hostname() -> str:
    """This machine's host name, looked up once per process."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname


def function_name(func: Any) -> str:
    """``module.qualname`` of a callable, for failure records."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}"


def failure_entry(
    item: Any,
    error: BaseException,
    *,
    attempts: int,
    function: str,
    include_traceback: bool = True,
    reason: str = "exception",
    extra: Optional[Dict[str, Any]] = None,
) -> DLQEntry:
    """The DLQ entry a worker sends for a failed item, with its item packed for transport.

    ``retry_count`` is the number of retries made (attempts - 1); ``metadata`` holds
    the attempts, the worker's pid and host, and the function's qualname.
    """
    packed = pack_for_transport(item)
    metadata: Dict[str, Any] = {
        "attempts": attempts,
        "pid": os.getpid(),
        "host": hostname(),
        "function": function,
    }
    if isinstance(packed, UnserializableItem):
        metadata["item_unserializable"] = True
    if extra:
        metadata.update(extra)
    entry = DLQEntry.from_exception(
        packed,
        error,
        retry_count=max(0, attempts - 1),
        metadata=metadata,
        include_traceback=False,
        reason=reason,
    )
    if include_traceback:
        entry.traceback = traceback_text(error)
    return entry


# --- traceback text -------------------------------------------------------------
#
# ``traceback.format_exception`` costs about 100 us per failure on Python 3.11+ (it
# re-parses every source line to place its ^^^ markers, and stats every file), more
# than everything else a failure costs together. The text below is what it prints
# without the markers (the Python 3.10 format): same frames, source lines, chained
# causes and contexts, repeated-frame folding, exception line and notes.

_RECURSIVE_CUTOFF = 3
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)  # Python 3.11+


def traceback_text(error: BaseException) -> Optional[str]:
    """The traceback text of ``error`` with chained exceptions, without column markers.

    Returns None for an exception that was never raised and has no cause or context.
    """
    if error.__traceback__ is None and error.__cause__ is None and error.__context__ is None:
        return None
    chain: List[Tuple[Optional[str], BaseException]] = []
    seen = set()
    current: Optional[BaseException] = error
    while current is not None:
        seen.add(id(current))
        if isinstance(current, SyntaxError) or (_GROUP is not None and isinstance(current, _GROUP)):
            # Rare layouts (carets under a syntax error, nested groups): the stdlib's text.
            return "".join(traceback.format_exception(type(error), error, error.__traceback__))
        cause, context = current.__cause__, current.__context__
        if cause is not None and id(cause) not in seen:
            chain.append((_CAUSE, current))
            current = cause
        elif context is not None and not current.__suppress_context__ and id(context) not in seen:
            chain.append((_CONTEXT, current))
            current = context
        else:
            chain.append((None, current))
            current = None
    out: List[str] = []
    for message, exc in reversed(chain):
        if message is not None:
            out.append(message)
        if exc.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            _format_frames(exc.__traceback__, out)
        _format_exception_line(exc, out)
    return "".join(out)


def _format_frames(tb: Any, out: List[str]) -> None:
    last: Optional[Tuple[str, int, str]] = None
    count = 0
    while tb is not None:
        code = tb.tb_frame.f_code
        key = (code.co_filename, tb.tb_lineno, code.co_name)
        if key != last:
            _note_repeats(count, out)
            last, count = key, 0
        count += 1
        if count <= _RECURSIVE_CUTOFF:
            out.append(f'  File "{key[0]}", line {key[1]}, in {key[2]}\n')
            line = linecache.getline(key[0], key[1] or 0, tb.tb_frame.f_globals).strip()
            if line:
                out.append(f"    {line}\n")
        tb = tb.tb_next
    _note_repeats(count, out)


def _note_repeats(count: int, out: List[str]) -> None:
    if count > _RECURSIVE_CUTOFF:
        extra = count - _RECURSIVE_CUTOFF
        out.append(f"  [Previous line repeated {extra} more time{'s' if extra > 1 else ''}]\n")


def _format_exception_line(exc: BaseException, out: List[str]) -> None:
    kind = type(exc)
    name = kind.__qualname__
    module = kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module if isinstance(module, str) else '<unknown>'}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    out.append(f"{name}: {text}\n" if text else f"{name}\n")
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        for note in notes:
            try:
                note_text = str(note)
            except Exception:
                note_text = "<note str() failed>"
            out.extend(line + "\n" for line in note_text.split("\n"))
    elif notes is not None:
        try:
            out.append(f"{notes!r}\n")
        except Exception:
            out.append("<__notes__ repr() failed>\n")


def failure_of(entry: DLQEntry) -> Failure:
    """The :class:`Failure` stand-in for ``entry``."""
    return Failure(entry.entry_id, entry.error_type, entry.error_message, entry.reason)


def picklable_error(error: BaseException, entry: DLQEntry) -> BaseException:
    """``error`` if it survives a pickle round trip, else a TaskFailedError carrying its text.

    A pool that cannot unpickle a worker's exception hangs or dies; never hand it one.
    """
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return TaskFailedError(entry.error_type, entry.error_message, entry.traceback)


def _load_function(data: bytes) -> Callable[[Any], Any]:
    func = _functions.get(data)
    if func is None:
        func = cloudpickle.loads(data)
        if len(_functions) >= _FUNCTION_CACHE_SIZE:
            _functions.clear()
        _functions[data] = func
    return func


def _client(address: Any, authkey: bytes) -> Any:
    from amorsize.dlq.shared import connect_proxy

    with _clients_lock:
        proxy = _clients.get(address)
        if proxy is None:
            proxy = _clients[address] = connect_proxy(address, authkey)
        return proxy


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
    ) -> None:
        if not callable(func):
            raise InvalidTypeError(f"func={func!r} is not valid; expected a callable")
        if retry is not None and not callable(getattr(retry, "run", None)):
            raise InvalidTypeError(f"retry={retry!r} is not valid; expected a RetryPolicy or None")
        self._func_bytes = dumps(func)
        self._func: Optional[Callable[[Any], Any]] = func
        self.function_name = function_name(func)
        self.retry = retry
        self.address = address
        self._authkey = authkey
        self.include_traceback = include_traceback
        self.reraise = reraise

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (self._func_bytes, self.function_name, self.retry, self.address, self._authkey,
             self.include_traceback, self.reraise),
        )

    def __repr__(self) -> str:
        return f"<captured {self.function_name} → shared DLQ at {self.address!r}>"

    def __call__(self, item: Any) -> Any:
        func = self._func
        if func is None:
            func = self._func = _load_function(self._func_bytes)
        ok, value, attempts = call_item(func, item, self.retry)
        if ok:
            return value
        entry = failure_entry(
            item, value, attempts=attempts, function=self.function_name,
            include_traceback=self.include_traceback,
        )
        self.record(entry)
        if self.reraise:
            raise picklable_error(value, entry) from None
        return failure_of(entry)

    def record(self, entry: DLQEntry) -> None:
        """Send ``entry`` to the shared queue now (before the caller returns)."""
        try:
            _client(self.address, self._authkey).call("add_entries", [entry])
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


def _rebuild(
    func_bytes: bytes, name: str, retry: Any, address: Any, authkey: bytes,
    include_traceback: bool, reraise: bool,
) -> CapturedFunction:
    hook = CapturedFunction.__new__(CapturedFunction)
    hook._func_bytes = func_bytes
    hook._func = None
    hook.function_name = name
    hook.retry = retry
    hook.address = address
    hook._authkey = authkey
    hook.include_traceback = include_traceback
    hook.reraise = reraise
    return hook
