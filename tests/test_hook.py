"""The capture() hook in one process: pickling, failure records, the success path, security.

Calling a :class:`CapturedFunction` directly in the test process exercises exactly
what a pool worker runs; tests/test_shared_dlq.py runs it inside real pools.
"""

from __future__ import annotations

import copyreg
import dataclasses
import os
import pickle
import socket
import stat
import threading
import time
from typing import Any, Iterator, List, Optional

import pytest

from amorsize import (
    AmorsizeError,
    DeadLetterQueue,
    DLQPolicy,
    Failure,
    InvalidArgumentError,
    InvalidTypeError,
    RetryPolicy,
    SharedDeadLetterQueue,
    SharedDLQUnavailableError,
    TaskFailedError,
    is_failure,
)
from amorsize.dlq.capture import CapturedFunction
from amorsize.dlq.policy import DLQFormat
from amorsize.serialization import UnserializableItem
from tests._cycles import cyclic_garbage_of

NOWHERE = "/nonexistent-amorsize-dir/dlq.sock"

# Most tests start a manager process.
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaked_children")]


def double(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return 2 * x


class TwoArgError(Exception):
    """An exception class that cannot be unpickled: __init__ needs two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@pytest.fixture(autouse=True)
def _two_arg_error_stays_unpicklable():
    """Importing dask.distributed (its plugin tests share this session) installs tblib's
    pickling for every exception class that exists at that moment, which would make
    TwoArgError picklable; undo it so these tests exercise the unpicklable case."""
    copyreg.dispatch_table.pop(TwoArgError, None)
    yield


def raise_two_arg(x: Any) -> Any:
    raise TwoArgError(7, f"bad {x!r}")


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@pytest.fixture
def dlq(tmp_path: Any) -> Iterator[SharedDeadLetterQueue]:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "dlq")) as queue:
        yield queue


# --- pickling ----------------------------------------------------------------


def test_failure_is_falsy_and_pickles() -> None:
    failure = Failure("abc", "ValueError", "bad", "exception")
    assert not failure
    assert is_failure(failure) and not is_failure(None) and not is_failure(0)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(failure, protocol=protocol))
        assert copy == failure and not copy
    assert "ValueError" in repr(failure) and "abc" in repr(failure)
    assert "entry_id" not in repr(Failure(None, "E", "m"))


def test_a_failure_pickled_as_before_still_loads() -> None:
    # Until session 6 a Failure pickled as NEWOBJ and its instance dict (a user may keep
    # results pickled); it now pickles through amorsize.failure.new_failure.
    before = (b"\x80\x04\x95\xaf\x00\x00\x00\x00\x00\x00\x00\x8c\x10amorsize.failure\x94\x8c\x07Failure"
              b"\x94\x93\x94)\x81\x94}\x94(\x8c\x08entry_id\x94\x8c\x140123456789abcdef0123\x94\x8c\n"
              b"error_type\x94\x8c\nValueError\x94\x8c\rerror_message\x94\x8c#order 5: missing field "
              b"'vat_number'\x94\x8c\x06reason\x94\x8c\texception\x94ub.")
    loaded = pickle.loads(before)
    assert loaded == Failure("0123456789abcdef0123", "ValueError", "order 5: missing field 'vat_number'")
    assert type(loaded) is Failure and not loaded
    assert b"new_failure" in pickle.dumps(loaded) and pickle.loads(pickle.dumps(loaded)) == loaded


@dataclasses.dataclass(frozen=True)
class TaggedFailure(Failure):
    tag: str = ""


def test_a_failure_subclass_pickles_as_itself() -> None:
    tagged = TaggedFailure("id", "E", "m", "exception", "t")
    copy = pickle.loads(pickle.dumps(tagged))
    assert type(copy) is TaggedFailure and copy == tagged and copy.tag == "t" and not copy


def test_retry_policy_pickles() -> None:
    for policy in (RetryPolicy(), RetryPolicy.none(), RetryPolicy(
        max_retries=5, initial_delay=0.01, max_delay=1.0, jitter=False,
        retry_on=(ValueError, KeyError), give_up_on=TypeError, max_elapsed=3.0,
    )):
        assert pickle.loads(pickle.dumps(policy)) == policy


def test_hook_built_from_a_lambda_pickles_with_std_pickle() -> None:
    hook = CapturedFunction(lambda x: x + 1, address=NOWHERE, authkey=b"k" * 32)
    copy = pickle.loads(pickle.dumps(hook))
    assert copy(41) == 42
    assert copy.address == NOWHERE and copy.function_name.endswith("<lambda>")
    assert "<lambda>" in repr(copy) and NOWHERE in repr(copy)


def test_hook_built_from_a_closure_with_retry_pickles(dlq: SharedDeadLetterQueue) -> None:
    offset = 100
    retry = RetryPolicy(max_retries=2, initial_delay=0.0, jitter=False)
    hook = dlq.capture(lambda x: x + offset, retry, reraise=True)
    copy = pickle.loads(pickle.dumps(hook, protocol=pickle.HIGHEST_PROTOCOL))
    assert copy(1) == 101
    assert copy.retry == retry and copy.reraise is True
    assert copy.address == dlq.address
    # A copy of a copy is still the same hook.
    assert pickle.loads(pickle.dumps(copy))(2) == 102


def test_hook_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidTypeError, match="func"):
        CapturedFunction(42, address=NOWHERE, authkey=b"k")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="retry"):
        CapturedFunction(double, retry=3, address=NOWHERE, authkey=b"k")


def test_unavailable_error_pickles_with_its_failure() -> None:
    hook = CapturedFunction(double, address=NOWHERE, authkey=b"k" * 32)
    with pytest.raises(SharedDLQUnavailableError) as info:
        hook(-1)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, AmorsizeError) and isinstance(copy, ConnectionError)
    assert copy.address == NOWHERE and copy.failure.item == -1
    assert str(copy) == str(info.value)


# --- the success path ---------------------------------------------------------


def test_success_path_makes_no_manager_call() -> None:
    # Nothing listens at NOWHERE: any call to the manager would fail.
    hook = CapturedFunction(double, address=NOWHERE, authkey=b"k" * 32)
    assert [hook(i) for i in range(5)] == [0, 2, 4, 6, 8]
    with pytest.raises(SharedDLQUnavailableError) as info:
        hook(-3)
    error = info.value
    assert NOWHERE in str(error) and error.address == NOWHERE
    assert error.failure.item == -3 and error.failure.error_type == "ValueError"
    assert "negative: -3" in str(error)


def test_hook_of_a_closed_queue_still_runs_succeeding_items(tmp_path: Any) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        hook = queue.capture(double)
    assert hook(4) == 8
    with pytest.raises(SharedDLQUnavailableError, match="negative: -4"):
        hook(-4)


# --- what a failure records ---------------------------------------------------


def test_failure_entry_records_item_error_traceback_and_context(dlq: SharedDeadLetterQueue) -> None:
    hook = dlq.capture(double)
    before = time.time()
    failure = hook(-5)
    assert isinstance(failure, Failure) and not failure
    [entry] = dlq.get_entries()
    assert failure.entry_id == entry.entry_id
    assert (failure.error_type, failure.error_message, failure.reason) == (
        "ValueError", "negative: -5", "exception",
    )
    assert entry.item == -5
    assert entry.error_type == "ValueError" and entry.error_qualname == "ValueError"
    assert entry.error_message == "negative: -5"
    assert entry.traceback is not None and "in double" in entry.traceback
    assert "ValueError: negative: -5" in entry.traceback
    assert entry.retry_count == 0
    assert entry.metadata == {
        "attempts": 1, "pid": os.getpid(), "host": socket.gethostname(),
        "function": f"{__name__}.double",
    }
    assert before <= entry.timestamp <= time.time()


def fail_below(x: int) -> int:
    return double(-x - 1)  # the error is raised two frames down, as in real work


@pytest.mark.parametrize("retry", [None, RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False)],
                         ids=["once", "retried"])
def test_a_recorded_failure_leaves_no_reference_cycle(dlq: SharedDeadLetterQueue, retry: Any) -> None:
    # The failed call's frames must go when the hook returns, not at the collector's next
    # pass: a cycle per failure made it run every ~15 failures, and kept each failure's
    # frames (and all their locals) alive until then.
    hook = dlq.capture(fail_below, retry=retry)
    assert is_failure(hook(0))  # connections and caches made
    leaked = cyclic_garbage_of(ValueError, lambda: [hook(i) for i in range(20)])
    assert not leaked, f"{len(leaked)} of 20 failures left in reference cycles"
    assert len(dlq) == 21


def test_retry_count_is_attempts_minus_one(dlq: SharedDeadLetterQueue) -> None:
    calls = []

    def always_fails(x: int) -> int:
        calls.append(x)
        raise KeyError(x)

    hook = dlq.capture(always_fails, RetryPolicy(max_retries=2, initial_delay=0.0, jitter=False))
    assert not hook(1)
    assert calls == [1, 1, 1]
    [entry] = dlq.get_entries()
    assert entry.retry_count == 2 and entry.metadata["attempts"] == 3
    assert entry.error_type == "KeyError"
    assert entry.metadata["function"].endswith("always_fails")


def test_an_item_that_succeeds_on_retry_leaves_no_entry(dlq: SharedDeadLetterQueue) -> None:
    attempts = []

    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return x

    hook = dlq.capture(flaky, RetryPolicy(max_retries=3, initial_delay=0.0, jitter=False))
    assert hook(9) == 9 and len(attempts) == 3
    assert dlq.size() == 0


def test_items_keep_their_types(dlq: SharedDeadLetterQueue) -> None:
    hook = dlq.capture(raise_two_arg)
    items = [(1, "a"), frozenset({1, 2}), {3, 4}, {"k": [1, 2.5, None]}, b"bytes", 2**200, "s"]
    for item in items:
        assert not hook(item)
    assert [e.item for e in dlq.get_entries()] == items
    assert [type(e.item) for e in dlq.get_entries()] == [type(i) for i in items]


def test_unpicklable_exception_is_recorded_as_text(dlq: SharedDeadLetterQueue) -> None:
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(TwoArgError(1, "x")))  # the premise
    failure = dlq.capture(raise_two_arg)("row")
    assert failure.error_type == "TwoArgError" and failure.error_message == "7: bad 'row'"
    [entry] = dlq.get_entries()
    assert entry.error_qualname == f"{__name__}.TwoArgError"
    assert entry.traceback is not None and "TwoArgError: 7: bad 'row'" in entry.traceback


def test_exception_with_broken_str_is_still_recorded(dlq: SharedDeadLetterQueue) -> None:
    def fails(x: Any) -> Any:
        raise BrokenStr()

    failure = dlq.capture(fails)(1)
    assert failure.error_type == "BrokenStr" and "failed" in failure.error_message
    assert dlq.size() == 1


def test_unserializable_item_is_recorded_by_repr_with_a_flag(dlq: SharedDeadLetterQueue) -> None:
    item = {"row": 3, "lock": threading.Lock()}
    failure = dlq.capture(raise_two_arg)(item)
    assert not failure
    [entry] = dlq.get_entries()
    assert isinstance(entry.item, UnserializableItem)
    assert "'row': 3" in entry.item.repr and entry.item.type_name == "dict"
    assert "lock" in entry.item.error.lower() or "pickle" in entry.item.error.lower()
    assert entry.metadata["item_unserializable"] is True


def test_reraise_raises_the_original_error_after_recording(dlq: SharedDeadLetterQueue) -> None:
    hook = dlq.capture(double, reraise=True)
    with pytest.raises(ValueError, match="negative: -2") as info:
        hook(-2)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert [e.item for e in dlq.get_entries()] == [-2]


def test_reraise_of_unpicklable_error_raises_task_failed(dlq: SharedDeadLetterQueue) -> None:
    hook = dlq.capture(raise_two_arg, reraise=True)
    with pytest.raises(TaskFailedError) as info:
        hook("x")
    error = info.value
    assert error.error_type == "TwoArgError" and error.error_message == "7: bad 'x'"
    assert "Worker traceback" in str(error)
    assert pickle.loads(pickle.dumps(error)).error_type == "TwoArgError"
    assert dlq.size() == 1


def test_base_exceptions_propagate_unrecorded(dlq: SharedDeadLetterQueue) -> None:
    def interrupted(x: Any) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dlq.capture(interrupted)(1)
    with pytest.raises(KeyboardInterrupt):
        dlq.capture(interrupted, RetryPolicy(max_retries=2, initial_delay=0.0))(1)
    assert dlq.size() == 0


def test_policy_without_tracebacks(tmp_path: Any) -> None:
    policy = DLQPolicy(directory=tmp_path, include_traceback=False)
    with SharedDeadLetterQueue(policy) as queue:
        assert not queue.capture(double)(-1)
        [entry] = queue.get_entries()
    assert entry.traceback is None and entry.error_message == "negative: -1"


# --- security and addressing --------------------------------------------------


def test_socket_dir_is_private_and_journal_is_0600(tmp_path: Any) -> None:
    policy_dir = tmp_path / "dlq"
    with SharedDeadLetterQueue(DLQPolicy(directory=policy_dir)) as queue:
        address = queue.address
        assert isinstance(address, str)
        socket_dir = os.path.dirname(address)
        assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700
        assert os.stat(socket_dir).st_uid == os.getuid()
        assert stat.S_ISSOCK(os.stat(address).st_mode)
        assert isinstance(queue.authkey, bytes) and len(queue.authkey) == 32
        queue.capture(double)(-1)
        queue.flush()
        assert stat.S_IMODE(os.stat(policy_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(policy_dir / "dlq.jsonl").st_mode) == 0o600
    assert not os.path.exists(socket_dir), "close() removes the private socket directory"


def test_every_queue_gets_its_own_address_and_key(tmp_path: Any) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "a")) as a, \
            SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "b")) as b:
        assert a.address != b.address and a.authkey != b.authkey


def test_wrong_authkey_is_refused(dlq: SharedDeadLetterQueue) -> None:
    with pytest.raises(SharedDLQUnavailableError, match="authkey") as info:
        SharedDeadLetterQueue.connect(dlq.address, b"x" * 32)
    assert info.value.address == dlq.address
    hook = CapturedFunction(double, address=dlq.address, authkey=b"x" * 32)
    with pytest.raises(SharedDLQUnavailableError, match="authkey") as info:
        hook(-1)
    assert info.value.failure.item == -1
    assert dlq.size() == 0


def test_connect_to_nothing_is_a_clear_error() -> None:
    with pytest.raises(SharedDLQUnavailableError, match="no shared DLQ is reachable"):
        SharedDeadLetterQueue.connect(NOWHERE, b"k" * 32)
    with pytest.raises(InvalidTypeError):
        SharedDeadLetterQueue.connect(NOWHERE, "not bytes")  # type: ignore[arg-type]


def test_constructor_validates(tmp_path: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="loopback"):
        SharedDeadLetterQueue(DLQPolicy(directory=tmp_path), address=("8.8.8.8", 0))
    with pytest.raises(InvalidTypeError):
        SharedDeadLetterQueue("policy")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        SharedDeadLetterQueue(DLQPolicy(directory=tmp_path), authkey="key")  # type: ignore[arg-type]


def test_loopback_tcp_address(tmp_path: Any) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path), address=("127.0.0.1", 0)) as queue:
        host, port = queue.address
        assert host == "127.0.0.1" and port > 0
        assert not queue.capture(double)(-1)
        other = SharedDeadLetterQueue.connect(queue.address, queue.authkey)
        assert other.size() == 1
        other.close()


def test_closed_handle_refuses_calls(tmp_path: Any) -> None:
    queue = SharedDeadLetterQueue(DLQPolicy(directory=tmp_path))
    queue.close()
    queue.close()  # idempotent
    assert "closed" in repr(queue)
    with pytest.raises(SharedDLQUnavailableError, match="closed"):
        queue.size()


def test_journal_survives_close(tmp_path: Any) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        hook = queue.capture(double)
        for i in range(1, 4):
            hook(-i)
    reopened = DeadLetterQueue(DLQPolicy(directory=tmp_path))
    assert sorted(e.item for e in reopened.get_entries()) == [-3, -2, -1]
    assert all(e.metadata["function"].endswith("double") for e in reopened.get_entries())


# --- traceback text -------------------------------------------------------------


def _nested(depth: int) -> None:
    if depth == 0:
        raise KeyError("deep")
    _nested(depth - 1)


def _recurse(n: int) -> int:
    return _recurse(n + 1)


def _with_cause() -> None:
    try:
        _nested(2)
    except KeyError as exc:
        raise RuntimeError("wrapped") from exc


def _with_context() -> None:
    try:
        {}["missing"]
    except KeyError:
        raise ValueError("while handling")  # noqa: B904 - the implicit context is the point


def _suppressed() -> None:
    try:
        {}["missing"]
    except KeyError:
        raise ValueError("clean") from None


def _empty_message() -> None:
    raise RuntimeError()


def _with_notes() -> None:
    error = ValueError("noted")
    if hasattr(error, "add_note"):
        error.add_note("first note\nsecond line")
    raise error


def _broken_str() -> None:
    raise BrokenStr()


def _module_class() -> None:
    raise TwoArgError(1, "custom")


def _caught(func: Any) -> BaseException:
    try:
        func()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _without_markers(text: str) -> str:
    # Python 3.11+ adds lines of ^ and ~ under the failing expression; 3.9 and 3.10 do not.
    kept = [line for line in text.splitlines(True) if line.strip(" ^~\n") or not line.strip()]
    return "".join(kept)


@pytest.mark.parametrize("func", [
    lambda: _nested(3), lambda: _recurse(0), _with_cause, _with_context, _suppressed,
    _empty_message, _with_notes, _broken_str, _module_class, lambda: 1 / 0,
])
def test_traceback_text_matches_the_stdlib_without_markers(func: Any) -> None:
    import traceback

    from amorsize.tracebacks import traceback_text

    error = _caught(func)
    expected = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert traceback_text(error) == _without_markers(expected)


def test_traceback_text_of_syntax_errors_and_unraised_errors() -> None:
    import traceback

    from amorsize.tracebacks import traceback_text

    error = _caught(lambda: compile("x = (", "<bad>", "exec"))
    expected = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert traceback_text(error) == expected
    assert traceback_text(ValueError("never raised")) is None
    cyclic = _caught(_with_cause)
    assert cyclic.__cause__ is not None
    cyclic.__cause__.__context__ = cyclic  # a cycle must not loop forever
    assert "RuntimeError: wrapped" in (traceback_text(cyclic) or "")


# --- the workers' fast lane (amorsize.dlq.ingest) ----------------------------------


class _Lane:
    """An IngestServer in this process, storing into a list (or failing on demand)."""

    def __init__(self, tmp_path: Any, authkey: bytes = b"k" * 32) -> None:
        from amorsize.dlq.ingest import IngestServer

        self.stored: List[Any] = []
        self.fail_with: Optional[Exception] = None
        self.server = IngestServer(str(tmp_path / "lane.sock"), authkey, self.store)
        self.server.start()
        self.address = self.server.address

    def store(self, entries: List[Any]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.stored.extend(entries)


@pytest.fixture
def make_lane(tmp_path: Any) -> Iterator[Any]:
    made: List[_Lane] = []

    def make(authkey: bytes = b"k" * 32) -> _Lane:
        made.append(_Lane(tmp_path, authkey))
        return made[-1]

    yield make
    for lane in made:
        lane.server.close()


def _entries(n: int, size: int = 10) -> List[Any]:
    from amorsize.dlq.entry import DLQEntry

    return [DLQEntry.from_exception("x" * size + str(i), ValueError(i), metadata={"i": i}) for i in range(n)]


def test_lane_stores_entries_exactly(make_lane: Any, tmp_path: Any) -> None:
    from amorsize.dlq.ingest_client import IngestClient

    lane = make_lane()
    client = IngestClient(lane.address, b"k" * 32)
    sent = _entries(3)
    client.send(sent[:1])
    client.send(sent[1:])
    assert [line.entry() for line in lane.stored] == sent  # stored before send() returned
    big = _entries(1, size=3 << 20)  # bigger than one read
    client.send(big)
    assert lane.stored[-1].entry() == big[0]
    client.close()


def test_lane_handles_split_and_pipelined_frames(make_lane: Any, tmp_path: Any) -> None:
    from amorsize.dlq.ingest import ACK, encode_entries
    from amorsize.dlq.ingest_client import IngestClient

    lane = make_lane()
    client = IngestClient(lane.address, b"k" * 32)
    sock = client._sock
    first, second = encode_entries(_entries(1)), encode_entries(_entries(2))
    sock.sendall(first[:5])
    time.sleep(0.05)
    sock.sendall(first[5:] + second)  # the rest of one frame and a whole second one
    assert client._recv_exactly(2) == ACK * 2
    assert len(lane.stored) == 3
    client.close()


def test_lane_refuses_garbage_and_storage_errors_but_keeps_serving(make_lane: Any, tmp_path: Any) -> None:
    from amorsize.dlq.ingest import HEADER, NACK, IngestError
    from amorsize.dlq.ingest_client import IngestClient

    lane = make_lane()
    client = IngestClient(lane.address, b"k" * 32)
    client._sock.sendall(HEADER.pack(3) + b"bad")
    assert client._recv_exactly(1) == NACK
    (size,) = HEADER.unpack(client._recv_exactly(HEADER.size))
    assert "could not decode" in client._recv_exactly(size).decode()
    lane.fail_with = OSError("disk on fire")
    with pytest.raises(IngestError, match="disk on fire"):
        client.send(_entries(1))
    lane.fail_with = None
    client.send(_entries(2))
    assert len(lane.stored) == 2
    client.close()


def test_lane_refuses_a_wrong_authkey(make_lane: Any, tmp_path: Any) -> None:
    import multiprocessing

    from amorsize.dlq.ingest_client import IngestClient

    lane = make_lane()
    with pytest.raises(multiprocessing.AuthenticationError):
        IngestClient(lane.address, b"x" * 32)
    client = IngestClient(lane.address, b"k" * 32)
    client.send(_entries(1))
    client.close()
    assert len(lane.stored) == 1


def test_lane_replaces_a_stale_socket_file(make_lane: Any, tmp_path: Any) -> None:
    path = tmp_path / "lane.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed manager leaves
    lane = make_lane()
    from amorsize.dlq.ingest_client import IngestClient

    client = IngestClient(lane.address, b"k" * 32)
    client.send(_entries(1))
    client.close()
    assert len(lane.stored) == 1


def test_hook_uses_the_lane_and_the_proxy_path_alike(dlq: SharedDeadLetterQueue) -> None:
    lane_hook = dlq.capture(double)
    assert lane_hook.ingest_address is not None
    proxy_hook = CapturedFunction(double, address=dlq.address, authkey=dlq.authkey)
    assert proxy_hook.ingest_address is None
    assert not lane_hook(-1) and not proxy_hook(-2)
    first, second = dlq.get_entries()
    assert (first.item, second.item) == (-1, -2)
    assert first.metadata.keys() == second.metadata.keys()
    assert (first.error_type, first.retry_count) == (second.error_type, second.retry_count)


def test_hook_lane_with_wrong_authkey(dlq: SharedDeadLetterQueue) -> None:
    hook = CapturedFunction(
        double, address=dlq.address, authkey=b"x" * 32, ingest_address=dlq.capture(double).ingest_address
    )
    with pytest.raises(SharedDLQUnavailableError, match="authkey") as info:
        hook(-1)
    assert info.value.failure.item == -1 and dlq.address in str(info.value)


def test_hook_is_thread_safe(dlq: SharedDeadLetterQueue) -> None:
    from concurrent.futures import ThreadPoolExecutor

    hook = dlq.capture(double)
    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(hook, range(-200, 200)))
    assert sum(isinstance(r, Failure) for r in results) == 200
    assert sorted(e.item for e in dlq.get_entries()) == list(range(-200, 0))


def test_lane_close_stops_its_threads(tmp_path: Any) -> None:
    from amorsize.dlq.ingest_client import IngestClient

    lane = _Lane(tmp_path)
    client = IngestClient(lane.address, b"k" * 32)
    client.send(_entries(1))
    before = {t for t in threading.enumerate() if t.name.startswith("amorsize-ingest")}
    assert len(before) >= 2
    lane.server.close()
    for thread in before:
        thread.join(5)
    assert not any(t.is_alive() for t in before)
    with pytest.raises((EOFError, OSError)):
        client.send(_entries(1))
    client.close()
    assert not os.path.exists(lane.address)


def test_hook_carries_a_policy_std_pickle_could_not() -> None:
    """The policy travels with the function in cloudpickle: an injected lambda sleep works."""
    slept: List[float] = []
    failures = {"left": 2}

    def flaky(x: int) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise TimeoutError("try again")
        return x

    policy = RetryPolicy(max_retries=3, initial_delay=0.5, jitter=False, sleep=lambda s: slept.append(s))
    hook = CapturedFunction(flaky, retry=policy, address=NOWHERE, authkey=b"k" * 32)
    copy = pickle.loads(pickle.dumps(hook))
    assert copy.retry == policy and copy.retry is not policy  # the same value, carried by value
    assert copy(7) == 7  # two failures, then success: no manager needed
    # The copy's lambda and closures travelled by value: it slept through its own list,
    # and the original function's failure budget is untouched.
    (copy_slept,) = [c.cell_contents for c in copy.retry.sleep.__closure__]
    assert copy_slept == [0.5, 1.0] and slept == [] and failures == {"left": 2}
    assert hook(8) == 8  # the original runs its own policy, with its own injected sleep
    assert slept == [0.5, 1.0] and failures == {"left": 0}


def test_lane_failing_loop_closes_connections_instead_of_hanging(
    make_lane: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amorsize.dlq.ingest import IngestServer
    from amorsize.dlq.ingest_client import IngestClient

    lane = make_lane()
    client = IngestClient(lane.address, b"k" * 32)
    client.send(_entries(1))

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(IngestServer, "_read", broken)
    started = time.monotonic()
    with pytest.raises((EOFError, OSError)):
        client.send(_entries(1))
    client.close()
    assert time.monotonic() - started < 5


def test_lane_frames_must_be_whole_journal_records(make_lane: Any) -> None:
    from amorsize.dlq.ingest import HEADER, NACK, encode_entries
    from amorsize.dlq.ingest_client import IngestClient

    lane = make_lane()
    client = IngestClient(lane.address, b"k" * 32)
    whole = encode_entries(_entries(1))[HEADER.size:]
    for bad in (whole[:-1], whole + b'{"no":"id"}\n', b"\n"):  # a cut line, a line without an id
        client._sock.sendall(HEADER.pack(len(bad)) + bad)
        assert client._recv_exactly(1) == NACK
        (size,) = HEADER.unpack(client._recv_exactly(HEADER.size))
        assert "could not decode" in client._recv_exactly(size).decode()
    assert lane.stored == []  # nothing of a refused frame is stored
    client.close()


def test_manager_journals_the_workers_bytes_and_reads_them_back(tmp_path: Any) -> None:
    from amorsize.dlq.records import encode_entry

    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path / "dlq")) as queue:
        hook = queue.capture(double)
        assert not hook(-1) and not hook(-2)
        entries = queue.get_entries()
        assert [e.item for e in entries] == [-1, -2]
        # The journal holds exactly the lines the worker encoded, and the in-memory
        # view decodes to the same entries as the file.
        journal = (tmp_path / "dlq" / "dlq.jsonl").read_bytes()
        assert journal == b"".join(encode_entry(e, pickle_everything=False) for e in entries)
        assert queue.get_summary()["error_types"] == {"ValueError": 2}
    with DeadLetterQueue(DLQPolicy(directory=tmp_path / "dlq")) as reread:
        assert reread.get_entries() == entries


def test_a_pickle_format_manager_still_pickles_lane_entries(tmp_path: Any) -> None:
    policy = DLQPolicy(directory=tmp_path / "dlq", format=DLQFormat.PICKLE)
    with SharedDeadLetterQueue(policy) as queue:
        assert not queue.capture(double)(-3)
        assert [e.item for e in queue.get_entries()] == [-3]
    line = (tmp_path / "dlq" / "dlq.jsonl").read_text()
    assert '"item_codec":"cloudpickle"' in line
