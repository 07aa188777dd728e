"""Several processes on one DLQ directory: appenders and a compacting queue never corrupt it.

Each process opens its own DeadLetterQueue on the directory. After they all
finish, a fresh queue must load every entry that was not deliberately removed,
and the file must read back strictly (no corrupt or torn record).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from amorsize import DeadLetterQueue, DLQFormat, DLQPolicy

APPENDERS = 2
PER_APPENDER = 250
COMPACTIONS = 40


@pytest.fixture(autouse=True)
def _resource_tracker_running():
    """spawn starts multiprocessing's resource tracker once per interpreter and keeps it:
    start it before no_leaked_children takes its snapshot, so it is not counted as leaked."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def policy(directory, fmt: str) -> DLQPolicy:
    return DLQPolicy(directory=directory, format=fmt, max_entries=0, fsync="never")


def appender(directory: str, fmt: str, n: int, start) -> None:
    start.wait(30)
    queue = DeadLetterQueue(policy(directory, fmt))
    error = ValueError("boom")
    for i in range(PER_APPENDER):
        if i % 25 == 0:  # batches too
            queue.extend(
                dataclasses.replace(queue.add(f"tmp-{n}-{i}-{k}", error), item=f"a{n}-{i}-batch{k}")
                for k in range(2)
            )
        queue.add(f"a{n}-{i}", error, metadata={"n": n})
    queue.close()


def compactor(directory: str, fmt: str, start) -> None:
    """Adds entries, removes half of them and rewrites the others: one compaction each time."""
    start.wait(30)
    queue = DeadLetterQueue(policy(directory, fmt))
    error = KeyError("gone")
    for i in range(COMPACTIONS):
        doomed = queue.add(f"doomed-{i}", error)
        kept = queue.add(f"kept-{i}", error)
        queue.update([dataclasses.replace(kept, retry_count=1)], remove_ids=[doomed.entry_id])
    queue.close()


def expected_items() -> set:
    items = {f"kept-{i}" for i in range(COMPACTIONS)}
    for n in range(APPENDERS):
        items |= {f"a{n}-{i}" for i in range(PER_APPENDER)}
        for i in range(0, PER_APPENDER, 25):
            items |= {f"tmp-{n}-{i}-{k}" for k in range(2)}  # added, then replaced by value
    return items


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", [DLQFormat.JSON.value, DLQFormat.PICKLE.value])
def test_processes_appending_while_one_compacts(tmp_path, start_method, no_leaked_children, fmt):
    import multiprocessing

    ctx = multiprocessing.get_context(start_method)
    start = ctx.Event()
    directory = str(tmp_path / "dlq")
    procs = [ctx.Process(target=appender, args=(directory, fmt, n, start)) for n in range(APPENDERS)]
    procs.append(ctx.Process(target=compactor, args=(directory, fmt, start)))
    try:
        for proc in procs:
            proc.start()
        start.set()
        for proc in procs:
            proc.join(90)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn record either
        queue = DeadLetterQueue(DLQPolicy(directory=directory, format=fmt, max_entries=0,
                                          allow_pickle=True))
    entries = queue.get_entries()
    queue.close()
    items = [e.item for e in entries]
    assert not [i for i in items if str(i).startswith("doomed")]
    assert len(items) == len(set(items))
    # tmp-… entries were replaced (same id) by the batch copies, so look at ids too.
    by_item = {e.item for e in entries}
    assert {f"a{n}-{i}" for n in range(APPENDERS) for i in range(PER_APPENDER)} <= by_item
    assert {f"kept-{i}" for i in range(COMPACTIONS)} <= by_item
    assert all(e.retry_count == 1 for e in entries if str(e.item).startswith("kept"))
    batch = {f"a{n}-{i}-batch{k}" for n in range(APPENDERS) for i in range(0, PER_APPENDER, 25)
             for k in range(2)}
    assert batch <= by_item
    assert len(entries) == APPENDERS * PER_APPENDER + COMPACTIONS + len(batch)
