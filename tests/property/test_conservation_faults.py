"""Conservation under issue 12's faults: BaseExceptions, unpicklable items, bad inputs, the default path.

Hypothesis draws a plan per item (succeed, raise an Exception, raise one of the
BaseExceptions the issue lists, raise StopIteration, be unpicklable), an input that is a list, a
generator, a generator that raises after some items or one that stalls, and the
backend choice: the default (``n_jobs=None``, where the optimizer may choose
serial) or two workers, under fork or spawn. Every input read ends exactly once:
as its own result, or as one DLQ entry with the reason its fault calls for; an
input that raises makes ``execute()`` raise an ``AmorsizeError`` whose
``.results`` are aligned with the items read. No input ever gets another's result.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amorsize import (
    AmorsizeError,
    DeadLetterQueue,
    DLQPolicy,
    UnserializableItem,
    execute,
    imap,
    is_failure,
)

pytestmark = [pytest.mark.timeout(170), pytest.mark.usefixtures("no_leaked_children")]

#: A stalling input pauses this long before one item (short: examples stay bounded).
STALL_SECONDS = 0.2
BASE_KINDS = ("SystemExit", "GeneratorExit", "custom", "KeyboardInterrupt")
#: "stop": func raises StopIteration, which must not end its chunk early.
KINDS = st.sampled_from(["ok"] * 8 + ["raise", "stop", "unpicklable", *BASE_KINDS])

Item = Tuple[int, str, Any]  # (index, kind, payload); an unpicklable item's payload is a Lock


class CustomBase(BaseException):
    """A user's BaseException subclass."""


class InputBroke(Exception):
    """The input iterator failed."""


def planned(item: Item) -> int:
    index, kind, _payload = item
    if kind == "raise":
        raise ValueError(f"item {index} fails")
    if kind == "stop":
        raise StopIteration(f"item {index} has no value")
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "GeneratorExit":
        raise GeneratorExit
    if kind == "custom":
        raise CustomBase(f"item {index}")
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt(f"raised by func at item {index}")
    return index * 10 + 1


def expected_reason(kind: str) -> Optional[str]:
    """None when the item should succeed, else the DLQ reason it should end with."""
    if kind == "ok":
        return None
    return "unpicklable_item" if kind == "unpicklable" else "exception"


def feed(items: List[Item], mode: str, at: int) -> Any:
    """The input: a list, a generator, one that raises before ``items[at]``, or one that stalls."""
    if mode == "list":
        return items

    def generate() -> Iterator[Item]:
        for position, item in enumerate(items):
            if position == at and mode == "raises":
                raise InputBroke(f"the input failed before item {at}")
            if position == at and mode == "stalls":
                time.sleep(STALL_SECONDS)
            yield item

    return generate()


@st.composite
def plans(draw: Any) -> Tuple[List[Item], str, int, dict]:
    kinds = draw(st.lists(KINDS, min_size=1, max_size=40))
    items = [(i, k, threading.Lock() if k == "unpicklable" else None) for i, k in enumerate(kinds)]
    mode = draw(st.sampled_from(["list", "generator", "raises", "stalls"]))
    at = draw(st.integers(0, len(items) - 1))
    options: dict = {"start_method": draw(st.sampled_from(["fork", "fork", "spawn"]))}
    if draw(st.booleans()):
        options.update(n_jobs=2, chunksize=draw(st.one_of(st.none(), st.integers(1, 8))))
    return items, mode, at, options


def guarded(run: Any) -> Any:
    """Call ``run``; a BaseException that escapes fails the example (and never stops pytest)."""
    try:
        return run()
    except Exception:
        raise
    except BaseException as escaped:  # what must not escape
        raise AssertionError(f"{type(escaped).__name__}({escaped}) escaped") from None


def check_positions(items: List[Item], values: List[Any], dlq: DeadLetterQueue) -> None:
    """Each value is its own item's result or its Failure; the DLQ holds exactly the failures."""
    entries = {e.entry_id: e for e in dlq.get_entries()}
    assert len(entries) == len(dlq.get_entries())
    failed_ids = []
    for item, value in zip(items, values):
        index, kind, _payload = item
        reason = expected_reason(kind)
        if reason is None:
            assert value == index * 10 + 1, (item, value)
            continue
        assert is_failure(value) and value.reason == reason, (item, value)
        entry = entries[value.entry_id]
        assert entry.reason == reason
        kept = entry.item.repr if isinstance(entry.item, UnserializableItem) else repr(entry.item)
        assert kept.startswith(f"({index}, '{kind}'"), (item, kept)
        failed_ids.append(value.entry_id)
    assert sorted(failed_ids) == sorted(entries), "DLQ entries that match no failed position"


@settings(max_examples=10)
@given(plans())
def test_every_input_read_ends_exactly_once(plan: Tuple[List[Item], str, int, dict]) -> None:
    items, mode, at, options = plan
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
    if mode == "raises":
        try:
            guarded(lambda: execute(planned, feed(items, mode, at), dlq=dlq, **options))
        except AmorsizeError as error:
            assert isinstance(error.__cause__, InputBroke), repr(error.__cause__)
            results = error.results  # type: ignore[attr-defined]
        else:
            raise AssertionError("the input raised, execute() did not")
        assert len(results) == at, f"{len(results)} results for {at} items read"
        check_positions(items[:at], results, dlq)
        return
    results = guarded(lambda: execute(planned, feed(items, mode, at), dlq=dlq, **options))
    assert len(results) == len(items)
    check_positions(items, results, dlq)


@settings(max_examples=5)
@given(plans())
def test_imap_unordered_yields_every_input_read_once(plan: Tuple[List[Item], str, int, dict]) -> None:
    items, mode, at, options = plan
    dlq = DeadLetterQueue(DLQPolicy(auto_persist=False, max_entries=0))
    out: List[Any] = []

    def consume() -> None:
        out.extend(imap(planned, feed(items, mode, at), dlq=dlq, ordered=False, **options))

    read = items[:at] if mode == "raises" else items
    if mode == "raises":
        with pytest.raises(Exception) as info:
            guarded(consume)
        error = info.value
        assert isinstance(error, InputBroke) or isinstance(error.__cause__, InputBroke), repr(error)
    else:
        guarded(consume)
    ok = sorted(v for v in out if not is_failure(v))
    assert ok == [i * 10 + 1 for i, kind, _ in read if expected_reason(kind) is None]
    failures = sorted(v.entry_id for v in out if is_failure(v))
    assert failures == sorted(e.entry_id for e in dlq.get_entries())
    assert len(failures) == sum(expected_reason(kind) is not None for _, kind, _ in read)
