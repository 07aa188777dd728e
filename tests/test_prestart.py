"""Workers started while the probe runs: taken by grow(), the rest released, none left behind."""

from __future__ import annotations

import time
from typing import Any, List

import psutil
import pytest

from amorsize import execute
from amorsize.backends import ChunkDone, ChunkSpec, ChunkTask, LocalProcessPool
from amorsize.run import plan
from amorsize.run.plan import PRESTART_MIN_ITEMS

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaked_children")]


def double(x: int) -> int:
    return 2 * x


def run_one(pool: LocalProcessPool, items: List[int]) -> List[Any]:
    pool.submit(ChunkTask(0, 0, items))
    events: List[Any] = []
    while not events:
        events = pool.wait(5)
    (event,) = events
    assert isinstance(event, ChunkDone), event
    return list(event.result.values)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_grow_takes_the_spares_and_release_lets_the_rest_go(start_method: str) -> None:
    pool = LocalProcessPool(ChunkSpec(double, None, True, "double"), n_jobs=1,
                            start_method=start_method, timeout=None)
    try:
        pool.prestart(2)
        spares = [w.process.pid for w in pool._spares]
        assert pool.size == 1 and pool.idle_count() == 1 and len(spares) == 2
        pool.grow(1)
        assert pool.size == 2 and pool._workers[1].process.pid in spares
        pool.release_spares()
        (left,) = [p for p in spares if p != pool._workers[1].process.pid]
        psutil.Process(left).wait(10)  # it leaves on its own, told by release_spares
        assert run_one(pool, [1, 2, 3]) == [2, 4, 6]
    finally:
        pool.close()


def slow_probe(x: int) -> int:
    if x < 5:  # the probe's items: longer than PRESTART_AFTER_SECONDS["fork"]
        time.sleep(0.02)
    return 2 * x


def spy_on_prestart(monkeypatch: Any) -> List[int]:
    prestarted: List[int] = []
    original = LocalProcessPool.prestart

    def spy(self: LocalProcessPool, n: int) -> None:
        prestarted.append(n)
        original(self, n)

    monkeypatch.setattr(LocalProcessPool, "prestart", spy)
    return prestarted


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_long_input_starts_the_spares_during_a_slow_probe(monkeypatch: Any, start_method: str) -> None:
    prestarted = spy_on_prestart(monkeypatch)
    n = PRESTART_MIN_ITEMS
    assert execute(slow_probe, range(n), start_method=start_method) == [2 * x for x in range(n)]
    assert execute(slow_probe, range(10), start_method=start_method) == [2 * x for x in range(10)]
    assert execute(slow_probe, iter(range(n)), start_method=start_method) == [2 * x for x in range(n)]
    assert len(prestarted) == 1 and prestarted[0] >= 0  # the long input of known length only


def test_a_fork_probe_that_answers_at_once_lets_the_decision_start_the_workers(monkeypatch: Any) -> None:
    # A fork costs the parent its own time: the probe's worker should get its first real
    # chunk first, then the decision forks only the workers it wants. The window is
    # widened here: whether a probe answers within the real 5 ms is a matter of the
    # machine's load (a loaded CI box missed it), not of this logic.
    monkeypatch.setattr(plan, "PRESTART_AFTER_SECONDS", {"fork": 2.0})
    prestarted = spy_on_prestart(monkeypatch)
    grown: List[int] = []
    original = LocalProcessPool.grow

    def spy(self: LocalProcessPool, n: int) -> None:
        grown.append(self.busy_count())
        original(self, n)

    monkeypatch.setattr(LocalProcessPool, "grow", spy)
    n = 20 * PRESTART_MIN_ITEMS
    assert execute(double, list(range(n)), start_method="fork") == [2 * x for x in range(n)]
    assert prestarted == []
    # Each grow after the probe found the probe's worker busy with a real chunk.
    assert grown and grown[-1] == 1, grown
