"""Conservation through the capture() hook: every input ends exactly once, either as a
result or as a DLQ entry, for random inputs, failure sets and chunk sizes.

One pool and one shared queue per start method serve every example (module-scoped
fixture); the queue is cleared between examples.
"""

from __future__ import annotations

import collections
import multiprocessing
from typing import Any, FrozenSet, Iterator, List, Tuple

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amorsize import DLQPolicy, Failure, RetryPolicy, SharedDeadLetterQueue

METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]
EXAMPLES = 15

pytestmark = pytest.mark.usefixtures("no_leaked_children")


class Flaky(Exception):
    pass


def make_func(failing: FrozenSet[int], flaky: FrozenSet[int]) -> Any:
    """A closure (carried by value by cloudpickle) failing on ``failing`` for good.

    Items in ``flaky`` fail on every odd-numbered attempt in a worker, so under a
    policy with one retry each call fails once, then succeeds: a retried success must
    not leave a DLQ entry. (Workers cache the loaded function, so the counter
    outlives a task; counting parity keeps the behaviour the same for every call.)
    """
    attempts: collections.Counter = collections.Counter()

    def etl(x: int) -> Tuple[int, int]:
        if x in failing:
            raise ValueError(f"bad {x}")
        if x in flaky:
            attempts[x] += 1
            if attempts[x] % 2:
                raise Flaky(x)
        return (x, x * x)

    return etl


@pytest.fixture(scope="module", params=METHODS)
def pool_and_dlq(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tuple[Any, SharedDeadLetterQueue]]:
    directory = tmp_path_factory.mktemp(f"conservation-{request.param}")
    with SharedDeadLetterQueue(DLQPolicy(directory=directory)) as dlq:
        pool = multiprocessing.get_context(request.param).Pool(2)
        pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        try:
            yield pool, dlq
        finally:
            pool.close()
            pool.join()
            _, alive = psutil.wait_procs(
                [psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=5
            )
            assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


inputs = st.lists(st.integers(min_value=0, max_value=20), max_size=60)


@pytest.mark.timeout(180)
@settings(max_examples=EXAMPLES)
@given(
    items=inputs,
    failing=st.frozensets(st.integers(min_value=0, max_value=20)),
    flaky=st.frozensets(st.integers(min_value=0, max_value=20), max_size=5),
    chunksize=st.integers(min_value=1, max_value=12),
    how=st.sampled_from(["map", "imap", "imap_unordered"]),
    retry=st.booleans(),
)
def test_every_input_ends_exactly_once(
    pool_and_dlq: Tuple[Any, SharedDeadLetterQueue],
    items: List[int],
    failing: FrozenSet[int],
    flaky: FrozenSet[int],
    chunksize: int,
    how: str,
    retry: bool,
) -> None:
    pool, dlq = pool_and_dlq
    dlq.clear()
    policy = RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False) if retry else None
    # Flaky items need the retry to recover; without one they would only alternate.
    hook = dlq.capture(make_func(failing, flaky if retry else frozenset()), policy)
    if how == "map":
        results = pool.map(hook, items, chunksize=chunksize)
    else:
        results = list(getattr(pool, how)(hook, items, chunksize=chunksize))
    assert len(results) == len(items)

    def fails(x: int) -> bool:
        return x in failing

    succeeded = [r for r in results if not isinstance(r, Failure)]
    failures = [r for r in results if isinstance(r, Failure)]
    entries = dlq.get_entries()

    # Conservation: results plus DLQ entries account for every input exactly once.
    assert collections.Counter(x for x, _ in succeeded) + collections.Counter(
        e.item for e in entries
    ) == collections.Counter(items)
    assert collections.Counter(e.item for e in entries) == collections.Counter(
        x for x in items if fails(x)
    )
    # Each Failure names its own entry, and no entry is orphaned or shared.
    assert sorted(f.entry_id for f in failures) == sorted(e.entry_id for e in entries)
    assert len({e.entry_id for e in entries}) == len(entries)
    assert all(y == x * x for x, y in succeeded)
    if how != "imap_unordered":
        for item, result in zip(items, results):
            assert isinstance(result, Failure) == fails(item)
            if not isinstance(result, Failure):
                assert result == (item, item * item)
    assert all(e.retry_count == (1 if retry else 0) for e in entries)


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(max_examples=150)
@given(
    items=st.lists(st.integers(min_value=0, max_value=60), max_size=400),
    failing=st.frozensets(st.integers(min_value=0, max_value=60)),
    chunksize=st.integers(min_value=1, max_value=50),
)
def test_every_input_ends_exactly_once_soak(
    pool_and_dlq: Tuple[Any, SharedDeadLetterQueue],
    items: List[int],
    failing: FrozenSet[int],
    chunksize: int,
) -> None:
    pool, dlq = pool_and_dlq
    dlq.clear()
    results = pool.map(dlq.capture(make_func(failing, frozenset())), items, chunksize=chunksize)
    entries = dlq.get_entries()
    assert collections.Counter(e.item for e in entries) == collections.Counter(
        x for x in items if x in failing
    )
    assert [isinstance(r, Failure) for r in results] == [x in failing for x in items]
    assert sorted(r.entry_id for r in results if isinstance(r, Failure)) == sorted(
        e.entry_id for e in entries
    )
