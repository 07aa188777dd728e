"""Conservation on the Dask backend: every input ends exactly once, as a value or a DLQ entry."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")
pytest.importorskip("amorsize_dask")

import sys

import cloudpickle
import pytest
from amorsize_dask import DaskBackend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fail_on_multiples(divisor: int):
    def func(x: int) -> int:
        if x % divisor == 0:
            raise ValueError(x)
        return x * 3

    return func


@pytest.mark.timeout(90)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=st.lists(st.integers(min_value=0, max_value=1000), max_size=40),
    divisor=st.integers(min_value=2, max_value=9),
    chunksize=st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
)
def test_every_item_ends_exactly_once(healthy, tmp_path_factory, items, divisor, chunksize) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path_factory.mktemp("dlq"))))
    out = execute(fail_on_multiples(divisor), items, backend=DaskBackend(client=healthy),
                  dlq=dlq, chunksize=chunksize)
    assert len(out) == len(items)
    failed = [i for i, v in enumerate(out) if is_failure(v)]
    entries = dlq.get_entries()
    assert sorted(e.metadata["index"] for e in entries) == failed
    assert failed == [i for i, x in enumerate(items) if x % divisor == 0]
    assert all(out[i] == x * 3 for i, x in enumerate(items) if x % divisor)
    assert all(items[e.metadata["index"]] == e.item for e in entries)
