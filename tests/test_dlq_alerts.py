"""on_add alerts: per entry, rate-limited with a count, outside locks, errors logged."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from amorsize import DeadLetterQueue, DLQPolicy, InvalidArgumentError, SharedDeadLetterQueue
from amorsize.dlq.alerts import Alerter


def memory_queue(**kw) -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0), **kw)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_called_once_per_entry_with_count_one():
    calls = []
    q = memory_queue(on_add=lambda e, n: calls.append((e.item, n)))
    q.add(1, ValueError("a"))
    q.extend([q.get_entries()[0].__class__(i, "E", "m", 1.0) for i in (2, 3)])
    assert calls == [(1, 1), (2, 1), (3, 1)]


def test_rate_limited_flood_gives_one_call_then_the_count():
    calls = []
    q = memory_queue(on_add=lambda e, n: calls.append((e.item, n)), alert_every_seconds=0.3)
    for i in range(100):
        q.add(i, ValueError("flood"))
    assert calls == [(0, 1)]  # the first one at once, the rest counted
    wait_for(lambda: len(calls) == 2)  # the timer delivers when the interval is over
    assert calls[1] == (99, 99)
    time.sleep(0.4)
    assert len(calls) == 2  # nothing pending: no empty call


def test_close_delivers_what_is_still_counted():
    calls = []
    q = memory_queue(on_add=lambda e, n: calls.append(n), alert_every_seconds=60)
    for i in range(5):
        q.add(i, ValueError("x"))
    q.close()
    assert calls == [1, 4]


def test_a_failing_callback_is_logged_not_raised(caplog):
    def broken(entry, count):
        raise RuntimeError("webhook down")

    q = memory_queue(on_add=broken)
    with caplog.at_level(logging.ERROR, logger="amorsize.dlq"):
        q.add(1, ValueError("a"))
    assert len(q) == 1
    assert "on_add callback" in caplog.text and "webhook down" in caplog.text


def test_the_callback_runs_outside_the_queue_lock():
    seen = []
    q: DeadLetterQueue

    def reader(entry, count):
        # Another thread reads the queue while the callback runs: it must not block.
        t = threading.Thread(target=lambda: seen.append(len(q.get_entries())))
        t.start()
        t.join(timeout=5)
        assert not t.is_alive()

    q = memory_queue(on_add=reader)
    q.add(1, ValueError("a"))
    assert seen == [1]


@pytest.mark.parametrize("kw", [{"on_add": 3}, {"on_add": print, "alert_every_seconds": -1},
                                {"alert_every_seconds": "1s"}])
def test_bad_arguments_are_refused(kw):
    with pytest.raises((InvalidArgumentError, TypeError)):
        memory_queue(**kw)


def test_alerter_with_an_injected_clock():
    now = [0.0]
    calls = []
    alerter = Alerter(lambda e, n: calls.append((e, n)), 10, clock=lambda: now[0])
    alerter.notify(["a"])
    alerter.notify(["b", "c"])
    now[0] = 11.0
    alerter.notify(["d"])
    assert calls == [("a", 1), ("d", 3)]
    alerter.flush()
    assert len(calls) == 2


def _fail(item):
    raise ValueError(f"item {item} failed")


def test_shared_queue_alerts_in_the_parent_for_worker_failures(tmp_path, no_leaked_children):
    import multiprocessing

    calls = []
    main_thread_pid = __import__("os").getpid()
    with SharedDeadLetterQueue(
        DLQPolicy(directory=tmp_path / "q"),
        on_add=lambda e, n: calls.append((e.error_message, n, __import__("os").getpid())),
    ) as dlq:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(dlq.capture(_fail), range(3))
        wait_for(lambda: len(calls) == 3)
    assert sorted(c[0] for c in calls) == [f"item {i} failed" for i in range(3)]
    assert {c[1] for c in calls} == {1} and {c[2] for c in calls} == {main_thread_pid}
