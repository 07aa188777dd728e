"""SharedDeadLetterQueue with real pools: the hook under fork, spawn and forkserver, in
``multiprocessing.Pool``, ``concurrent.futures`` and loky; the parent-side API; connect().

One pool of each kind per start method serves the whole module (module-scoped
fixtures), and one shared queue is cleared between tests, to keep the suite fast.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import psutil
import pytest

from amorsize import (
    DeadLetterQueue,
    DLQEntry,
    DLQPolicy,
    Failure,
    RetryPolicy,
    SharedDeadLetterQueue,
    replay_failed_items,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]
NO_WAIT = RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False)


@dataclasses.dataclass(frozen=True)
class Point:
    """An importable custom class used as an item (spawn workers import this module)."""

    x: int
    y: int


def parse(record: Any) -> int:
    """Fails on records whose first number is a multiple of 3."""
    first = record[0] if isinstance(record, tuple) else record
    if isinstance(first, Point):
        first = first.x
    if isinstance(first, (set, frozenset)):
        first = min(first)
    if first % 3 == 0:
        raise ValueError(f"malformed record {first}")
    return first * 10


def call_with_lock(hook: Any, x: int) -> Any:
    """Runs in a worker: hands the hook an item no pickler can serialize."""
    return hook((x, threading.Lock()))


def same_multiset(left: Sequence[Any], right: Sequence[Any]) -> bool:
    """Multiset equality for items that may be unhashable (sets, dicts)."""
    rest = list(right)
    for value in left:
        for i, candidate in enumerate(rest):
            if candidate == value and type(candidate) is type(value):
                del rest[i]
                break
        else:
            return False
    return not rest


def check_aligned(items: Sequence[Any], results: Sequence[Any], entries: List[DLQEntry]) -> None:
    """Results line up with inputs; Failures sit exactly at failing inputs; DLQ holds those."""
    assert len(results) == len(items)
    failed = []
    by_id = {e.entry_id: e for e in entries}
    for item, result in zip(items, results):
        try:
            expected = parse(item)
        except ValueError as exc:
            assert isinstance(result, Failure) and not result
            assert result.error_type == "ValueError" and result.error_message == str(exc)
            assert by_id[result.entry_id].item == item
            failed.append(item)
        else:
            assert result == expected
    assert len(entries) == len(failed)
    assert same_multiset([e.item for e in entries], failed)


def _assert_gone(pids: Sequence[int]) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"pool workers outlived their pool: {alive}"


@pytest.fixture(scope="module")
def shared_dlq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDeadLetterQueue]:
    policy = DLQPolicy(directory=tmp_path_factory.mktemp("shared-dlq"))
    with SharedDeadLetterQueue(policy) as queue:
        yield queue


@pytest.fixture
def dlq(shared_dlq: SharedDeadLetterQueue) -> SharedDeadLetterQueue:
    shared_dlq.clear()
    return shared_dlq


@pytest.fixture(scope="module", params=METHODS)
def pools(request: pytest.FixtureRequest) -> Iterator[Tuple[Any, concurrent.futures.Executor]]:
    """A multiprocessing.Pool and a ProcessPoolExecutor, two workers each, per start method."""
    ctx = multiprocessing.get_context(request.param)
    pool = ctx.Pool(2)
    executor = concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx)
    # Workers start on demand: start both now, so no test sees them as its own children.
    assert list(executor.map(abs, [-1, -2])) == [1, 2]
    try:
        yield pool, executor
    finally:
        pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        pids += list(getattr(executor, "_processes", {}) or {})
        pool.close()
        pool.join()
        executor.shutdown(wait=True)
        _assert_gone(pids)


pytestmark = pytest.mark.usefixtures("no_leaked_children")


# --- multiprocessing.Pool -----------------------------------------------------


@pytest.mark.timeout(60)
def test_pool_map_imap_and_apply_async(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    pool, _ = pools
    items = list(range(1, 25))
    hook = dlq.capture(lambda x: parse(x), NO_WAIT)

    results = pool.map(hook, items, chunksize=4)
    check_aligned(items, results, dlq.get_entries())
    assert all(e.retry_count == 1 and e.metadata["attempts"] == 2 for e in dlq.get_entries())
    dlq.clear()

    results = list(pool.imap(hook, items, chunksize=3))
    check_aligned(items, results, dlq.get_entries())
    dlq.clear()

    futures = [pool.apply_async(hook, (i,)) for i in items]
    check_aligned(items, [f.get(timeout=30) for f in futures], dlq.get_entries())
    dlq.clear()

    unordered = list(pool.imap_unordered(hook, items, chunksize=5))
    assert sorted(r for r in unordered if r) == sorted(parse(i) for i in items if i % 3)
    failures = [r for r in unordered if isinstance(r, Failure)]
    entries = {e.entry_id: e for e in dlq.get_entries()}
    assert sorted(entries[f.entry_id].item for f in failures) == [i for i in items if i % 3 == 0]
    assert len(entries) == len(failures)


@pytest.mark.timeout(60)
def test_pool_with_closure_and_rich_items(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    pool, _ = pools
    seen_offset = 0

    def closure(record: Any) -> int:
        return parse(record) + seen_offset

    items: List[Any] = [
        (3, "a"), (4, "b"), frozenset({6, 7}), Point(9, 1), Point(10, 2),
        (12, ("nested", 1.5)), (15, None), 16,
    ]
    results = pool.map(dlq.capture(closure), items, chunksize=2)
    check_aligned(items, results, dlq.get_entries())
    workers = {e.metadata["pid"] for e in dlq.get_entries()}
    assert os.getpid() not in workers


@pytest.mark.timeout(60)
def test_unserializable_item_built_in_a_worker(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    pool, _ = pools
    hook = dlq.capture(lambda x: parse(x[0]))
    futures = [pool.apply_async(call_with_lock, (hook, i)) for i in (3, 4)]
    results = [f.get(timeout=30) for f in futures]
    assert isinstance(results[0], Failure) and results[1] == 40
    entries = [e for e in dlq.get_entries() if e.metadata.get("item_unserializable")]
    assert len(entries) == 1 and "lock" in entries[0].item.repr


# --- concurrent.futures -------------------------------------------------------


@pytest.mark.timeout(60)
def test_process_pool_executor_map_and_submit(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    _, executor = pools
    items = [(i, str(i)) for i in range(12)] + [frozenset({i, i + 1}) for i in range(3, 7)]
    hook = dlq.capture(lambda r: parse(r))

    results = list(executor.map(hook, items, chunksize=3))
    check_aligned(items, results, dlq.get_entries())
    dlq.clear()

    futures = [executor.submit(hook, item) for item in items]
    check_aligned(items, [f.result(timeout=30) for f in futures], dlq.get_entries())


# --- other start methods and loky ---------------------------------------------


@pytest.mark.timeout(60)
def test_forkserver_pool(dlq: SharedDeadLetterQueue) -> None:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    items = [Point(i, -i) for i in range(10)]
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        results = pool.map(dlq.capture(lambda p: parse(p)), items, chunksize=3)
        pool.close()
        pool.join()
    check_aligned(items, results, dlq.get_entries())


@pytest.mark.timeout(90)
def test_loky_executor_with_local_classes(dlq: SharedDeadLetterQueue) -> None:
    loky = pytest.importorskip("loky")

    class Row:  # local: loky carries it by value with cloudpickle
        def __init__(self, n: int) -> None:
            self.n = n

        def __eq__(self, other: object) -> bool:
            return type(other).__name__ == "Row" and getattr(other, "n", None) == self.n

        __hash__ = None  # type: ignore[assignment]

    def etl(row: Any) -> int:
        return parse(row.n)

    items = [Row(i) for i in range(9)]
    executor = loky.ProcessPoolExecutor(max_workers=2)
    try:
        results = list(executor.map(dlq.capture(etl), items, chunksize=2))
        futures = [executor.submit(dlq.capture(etl), Row(i)) for i in (30, 31)]
        extra = [f.result(timeout=30) for f in futures]
    finally:
        executor.shutdown(wait=True)
    assert [None if isinstance(r, Failure) else r for r in results] == [
        None if i % 3 == 0 else i * 10 for i in range(9)
    ]
    assert not extra[0] and extra[1] == 310
    entries = dlq.get_entries()
    assert sorted(e.item.n for e in entries) == [0, 3, 6, 30]
    assert all(type(e.item).__name__ == "Row" for e in entries)


# --- many workers writing at once ---------------------------------------------


@pytest.mark.timeout(60)
def test_concurrent_failures_are_all_recorded_once(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    pool, _ = pools
    items = list(range(0, 900, 3))  # every one fails
    results = pool.map(dlq.capture(parse), items, chunksize=7)
    assert all(isinstance(r, Failure) for r in results)
    entries = dlq.get_entries()
    assert sorted(e.item for e in entries) == items
    assert len({e.entry_id for e in entries}) == len(items)
    assert {r.entry_id for r in results} == {e.entry_id for e in entries}
    assert dlq.get_summary()["error_types"] == {"ValueError": len(items)}


# --- the DeadLetterQueue API in the parent ------------------------------------


@pytest.mark.timeout(30)
def test_parent_side_api(dlq: SharedDeadLetterQueue, tmp_path: Any) -> None:
    first = dlq.add((1, 2), ValueError("a"), retry_count=2, metadata={"src": "x"})
    assert first.item == (1, 2)
    dlq.add_entry(DLQEntry.from_exception({3}, KeyError("b")))
    assert dlq.extend([DLQEntry.from_exception(Point(4, 4), TypeError("c"), reason="timeout")]) == 1
    assert dlq.extend([]) == 0
    assert dlq.size() == len(dlq) == 3
    assert [e.item for e in dlq.get_entries()] == [(1, 2), {3}, Point(4, 4)]
    assert dlq.get_entries()[0].metadata == {"src": "x"}

    summary = dlq.get_summary()
    assert summary["total_entries"] == 3
    assert summary["error_types"] == {"ValueError": 1, "KeyError": 1, "TypeError": 1}
    assert summary["reasons"] == {"exception": 2, "timeout": 1}

    assert [e.item for e in dlq.filter(error_type="KeyError")] == [{3}]
    assert [e.item for e in dlq.filter(reason="timeout")] == [Point(4, 4)]
    assert [e.item for e in dlq.filter(predicate=lambda e: e.retry_count == 2)] == [(1, 2)]
    assert dlq.filter(since=first.timestamp, until=first.timestamp)[0].entry_id == first.entry_id

    changed = dataclasses.replace(dlq.get_entries()[1], error_message="edited")
    assert dlq.update([changed], remove_ids=[first.entry_id]) == 1
    assert [e.error_message for e in dlq.get_entries()] == ["edited", "c"]

    saved = dlq.save(tmp_path / "copy.jsonl")
    assert os.path.isabs(saved) and os.path.exists(saved)
    assert dlq.remove([e.entry_id for e in dlq.get_entries()]) == 2
    assert dlq.load(saved) == 2
    assert dlq.size() == 2
    dlq.flush()
    assert dlq.clear() == 2 and dlq.size() == 0


@pytest.mark.timeout(60)
def test_replay_after_a_fix(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    pool, _ = pools
    items = list(range(10))
    results = pool.map(dlq.capture(parse), items)
    assert sum(isinstance(r, Failure) for r in results) == 4

    def fixed(x: int) -> int:
        if x == 9:
            raise RuntimeError("still broken")
        return x * 10

    # `fixed` is not `parse` by name: by default its entries would be skipped.
    recovered, still_failed = replay_failed_items(dlq, fixed, function=None)
    assert sorted(recovered) == [0, 30, 60]
    assert [e.item for e in still_failed] == [9] and still_failed[0].retry_count == 1
    assert [(e.item, e.error_type) for e in dlq.get_entries()] == [(9, "RuntimeError")]


@pytest.mark.timeout(30)
def test_close_flushes_the_journal_and_stops_the_manager(tmp_path: Any) -> None:
    queue = SharedDeadLetterQueue(DLQPolicy(directory=tmp_path))
    manager_pid = queue._manager._process.pid  # type: ignore[union-attr]
    hook = queue.capture(parse)
    for i in (3, 6, 7, 9):
        hook(i)
    queue.add("by parent", ValueError("p"))
    queue.close()
    _assert_gone([manager_pid])
    reopened = DeadLetterQueue(DLQPolicy(directory=tmp_path))
    assert sorted(map(str, (e.item for e in reopened.get_entries()))) == ["3", "6", "9", "by parent"]


def test_a_closed_handle_refuses_capture_and_pickling_says_what_to_send(tmp_path: Any) -> None:
    """Before the fix: capture() on a closed handle returned a hook bound to nothing, and
    pickling the queue into a worker raised multiprocessing's "Pickling an
    AuthenticationString object is disallowed", naming neither the queue nor a remedy."""
    import pickle

    from amorsize import AmorsizeError, SharedDLQUnavailableError

    queue = SharedDeadLetterQueue(DLQPolicy(directory=tmp_path))
    try:
        with pytest.raises(TypeError) as info:
            pickle.dumps(queue)
        assert isinstance(info.value, AmorsizeError)
        assert "dlq.capture(func)" in str(info.value) and "connect" in str(info.value)
    finally:
        queue.close()
    with pytest.raises(SharedDLQUnavailableError, match="handle is closed"):
        queue.capture(parse)


# --- connect() from another process --------------------------------------------

CLIENT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from amorsize import SharedDeadLetterQueue, SharedDLQUnavailableError

    address = sys.argv[1]
    authkey = bytes.fromhex(os.environ["AMORSIZE_TEST_AUTHKEY"])
    try:
        queue = SharedDeadLetterQueue.connect(address, authkey)
    except SharedDLQUnavailableError as exc:
        print("REFUSED", exc)
        sys.exit(3)
    print("size", queue.size())
    queue.add(("from", "client"), KeyError("k"), metadata={"client_pid": os.getpid()})

    def half(x):
        if x % 2:
            raise ArithmeticError("odd")
        return x // 2

    hook = queue.capture(half)
    print("results", [hook(x) if x % 2 == 0 else bool(hook(x)) for x in range(4)])
    queue.close()  # a connected handle detaches; the manager stays up
    """
)


def _run_client(address: Any, authkey: bytes) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, AMORSIZE_TEST_AUTHKEY=authkey.hex())
    return subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(address)],
        env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.timeout(90)
def test_connect_from_another_process(dlq: SharedDeadLetterQueue) -> None:
    dlq.add("parent item", ValueError("p"))
    done = _run_client(dlq.address, dlq.authkey)
    assert done.returncode == 0, done.stderr
    assert "size 1" in done.stdout and "results [0, False, 1, False]" in done.stdout
    entries = dlq.get_entries()
    assert [e.item for e in entries] == ["parent item", ("from", "client"), 1, 3]
    client_pid = entries[1].metadata["client_pid"]
    assert entries[2].metadata["pid"] == client_pid and entries[2].error_type == "ArithmeticError"
    assert dlq.size() == 4  # the manager outlived the client's close()

    refused = _run_client(dlq.address, os.urandom(32))
    assert refused.returncode == 3, refused.stderr
    assert "REFUSED" in refused.stdout and "authkey" in refused.stdout
    assert dlq.size() == 4


@pytest.mark.timeout(30)
def test_connected_handle_sees_the_same_queue(dlq: SharedDeadLetterQueue) -> None:
    other = SharedDeadLetterQueue.connect(dlq.address, dlq.authkey)
    try:
        assert other.policy == dlq.policy
        other.add((5, 5), ValueError("via other"))
        dlq.capture(parse)(3)
        assert [e.item for e in other.get_entries()] == [(5, 5), 3]
        assert collections.Counter(e.error_type for e in dlq.get_entries()) == {"ValueError": 2}
    finally:
        other.close()
    assert dlq.size() == 2


@pytest.mark.timeout(30)
def test_journal_shows_the_item_repr_of_pickled_items(tmp_path: Any) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=tmp_path)) as queue:
        queue.add((1, "a"), ValueError("x"))
        queue.capture(parse)(frozenset({3}))
    reopened = DeadLetterQueue(DLQPolicy(directory=tmp_path))  # pickle not allowed: placeholders
    shown = [repr(e.item) for e in reopened.get_entries()]
    assert shown == [
        "<pickled item, not loaded: (1, 'a')>", "<pickled item, not loaded: frozenset({3})>",
    ]
    trusted = DeadLetterQueue(DLQPolicy(directory=tmp_path, allow_pickle=True))
    assert [e.item for e in trusted.get_entries()] == [(1, "a"), frozenset({3})]


@pytest.mark.timeout(60)
def test_retry_on_a_class_carried_by_value(pools: Any, dlq: SharedDeadLetterQueue) -> None:
    """A local exception class travels by value (cloudpickle) in the function and in
    the retry policy; in the worker both must be the same class, or retry_on never matches."""
    pool, executor = pools

    class Transient(Exception):
        pass

    seen: Dict[int, int] = {}

    def flaky(x: int) -> int:
        seen[x] = seen.get(x, 0) + 1
        if seen[x] == 1:
            raise Transient(x)
        return x

    hook = dlq.capture(flaky, RetryPolicy(max_retries=1, initial_delay=0.0, retry_on=Transient))
    assert pool.map(hook, range(6), chunksize=2) == list(range(6))
    assert list(executor.map(hook, range(10, 14))) == list(range(10, 14))
    assert dlq.size() == 0


@pytest.mark.timeout(60)
def test_pickled_journal_loaded_by_the_manager_reads_back_whole(tmp_path):
    """The manager keeps pickled items and metadata as bytes; the parent unpickles them."""
    from amorsize import DeadLetterQueue, DLQFormat, DLQPolicy, SharedDeadLetterQueue

    policy = DLQPolicy(directory=str(tmp_path), format=DLQFormat.PICKLE)
    plain = DeadLetterQueue(policy)
    plain.add((1, "a"), ValueError("boom"), metadata={"where": ("row", 7)})
    plain.close()
    with SharedDeadLetterQueue(policy) as shared:
        (entry,) = shared.get_entries()
    assert entry.item == (1, "a")
    assert entry.metadata == {"where": ("row", 7)}
