"""execute() and imap(): API, validation, ordering, laziness and failure routing.

Crash, timeout and signal behaviour is in tests/faults/test_execute_faults.py, the
conservation property (every item ends exactly once) in tests/property/.
"""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import inspect
import itertools
import os
import pydoc
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from amorsize import (
    AmorsizeError,
    DeadLetterQueue,
    DLQEntry,
    DLQPolicy,
    Failure,
    InvalidArgumentError,
    InvalidTypeError,
    RetryPolicy,
    SharedDeadLetterQueue,
    TaskFailedError,
    execute,
    imap,
    is_failure,
)
from amorsize.errors import UnknownArgumentError
from amorsize.run.dispatch import REORDER_CHUNKS_PER_WORKER
from amorsize.run.options import RunOptions

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leaked_children")]


def memory_dlq() -> DeadLetterQueue:
    return DeadLetterQueue(DLQPolicy(auto_persist=False))


def double(x: int) -> int:
    return x * 2


def jittery_double(x: int) -> int:
    time.sleep((x * 7 % 5) / 1000)  # finish out of order
    return x * 2


def fail_on_multiples_of_five(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"no multiples of five: {x}")
    return x * 2


def head_waits_for(flag: str, x: int) -> int:
    """Item 0 finishes only once the consumer has seen every other item (or after 30 s)."""
    if x == 0:
        deadline = time.monotonic() + 30
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
    return x


def pid_of(_x: Any) -> int:
    return os.getpid()


def always_fails(x: int) -> int:
    raise RuntimeError(f"always {x}")


def lookup_missing(x: int) -> int:
    table = {x: x for x in range(10) if x != 3}
    return table[x] if x in table else {}[f"missing-{x}"]


class UnloadableError(Exception):
    """Pickles, but cannot be rebuilt: its __init__ takes two arguments."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def raise_unloadable(x: int) -> int:
    if x == 2:
        raise UnloadableError(7, f"item {x}")
    return x


# -- validation ----------------------------------------------------------------------

BAD_OPTIONS = [
    ("n_jobs", 0, ValueError),
    ("n_jobs", -2, ValueError),
    ("n_jobs", 1.5, ValueError),
    ("chunksize", "x", ValueError),
    ("chunksize", 0, ValueError),
    ("timeout", -1, ValueError),
    ("timeout", 0, ValueError),
    ("timeout", "3", ValueError),
    ("on_failure", "nope", ValueError),
    ("dlq", 42, TypeError),
    ("retry", 3, TypeError),
    ("on_progress", "print", ValueError),
    ("max_crashes", -1, ValueError),
    # Before the fix: a bare ValueError from multiprocessing, and truthy values taken.
    ("start_method", "thread", ValueError),
    ("progress", "yes", TypeError),
    ("dry_run", 0, TypeError),
]


@pytest.mark.parametrize(("name", "value", "builtin"), BAD_OPTIONS)
def test_execute_rejects_a_bad_option_naming_it(name: str, value: Any, builtin: type) -> None:
    with pytest.raises(AmorsizeError) as info:
        execute(double, range(3), **{name: value})
    assert isinstance(info.value, builtin)
    assert isinstance(info.value, (InvalidArgumentError, InvalidTypeError))
    assert f"{name}={value!r}" in str(info.value)


@pytest.mark.parametrize(("name", "value", "builtin"), [*BAD_OPTIONS[:4], BAD_OPTIONS[9]])
def test_imap_rejects_a_bad_option_when_called(name: str, value: Any, builtin: type) -> None:
    # Like the builtin map(): the error comes from the call, not from the first next().
    with pytest.raises(builtin) as info:
        imap(double, range(3), **{name: value})
    assert f"{name}={value!r}" in str(info.value)


@pytest.mark.parametrize("items", [None, 5, 2.5])
def test_items_must_be_iterable_naming_the_value(items: Any) -> None:
    """Before the fix: a bare TypeError "'NoneType' object is not iterable", from execute()
    and from imap()'s first next(), not from the call."""
    for call in (execute, imap):
        with pytest.raises(InvalidTypeError, match=rf"items={items!r} is not valid; expected an iterable"):
            call(double, items)


def test_func_must_be_callable() -> None:
    with pytest.raises(TypeError, match="func=3"):
        execute(3, range(3))  # type: ignore[arg-type]


def test_on_failure_dlq_needs_a_dlq() -> None:
    with pytest.raises(ValueError, match="on_failure='dlq'"):
        execute(double, range(3), on_failure="dlq")


def test_unknown_backend_is_named() -> None:
    with pytest.raises(LookupError, match="nope"):
        execute(double, range(3), backend="nope")


def test_an_unknown_keyword_suggests_the_nearest_name() -> None:
    for call in (execute, imap):
        with pytest.raises(UnknownArgumentError, match=r"did you mean n_jobs\?") as info:
            call(double, range(3), njobs=2)
        assert isinstance(info.value, TypeError) and isinstance(info.value, AmorsizeError)
        assert "'njobs'" in str(info.value)
    with pytest.raises(UnknownArgumentError, match=r"it accepts: .*n_jobs.*checkpoint"):
        execute(double, range(3), zzzzzz=1)
    with pytest.raises(UnknownArgumentError, match="did you mean ordered"):
        imap(double, range(3), orderd=False)


def test_options_are_explicit_keyword_parameters_in_help() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    for call, skipped in ((execute, {"ordered"}), (imap, set())):
        params = inspect.signature(call).parameters
        assert list(params)[:2] == ["func", "items"]
        options = {name: p.default for name, p in params.items() if name not in ("func", "items")}
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in options)
        assert options == {n: d for n, d in fields.items() if n not in skipped}
        assert "target_chunk_duration: 'float' = 0.2" in pydoc.render_doc(call, renderer=pydoc.plaintext)


# -- results and ordering ---------------------------------------------------------------


def test_results_are_aligned_with_items(start_method: str) -> None:
    items = list(range(150))
    assert execute(jittery_double, items, n_jobs=2, chunksize=7, start_method=start_method) == [
        2 * x for x in items
    ]


def test_defaults_choose_workers_and_chunks() -> None:
    assert execute(double, range(1000)) == [2 * x for x in range(1000)]


def test_empty_input() -> None:
    assert execute(double, []) == []
    assert list(imap(double, iter([]), n_jobs=2)) == []


def test_imap_ordered_yields_in_input_order() -> None:
    assert list(imap(jittery_double, range(60), n_jobs=2, chunksize=1)) == [2 * x for x in range(60)]


def test_imap_unordered_is_complete_and_does_not_wait_for_a_slow_head(tmp_path: Path) -> None:
    # No race: item 0 is held until the consumer has received the 19 others, so an
    # imap that waited for its head would only see them after the 30 s fallback.
    flag = tmp_path / "all-others-seen"
    out: List[int] = []
    for value in imap(functools.partial(head_waits_for, str(flag)), range(20), n_jobs=2,
                      chunksize=1, ordered=False):
        out.append(value)
        if len(out) == 19:
            flag.touch()
    assert sorted(out) == list(range(20))
    assert out[-1] == 0


def test_generator_input_of_unknown_length() -> None:
    assert execute(double, (x for x in range(500)), n_jobs=2) == [2 * x for x in range(500)]


def test_lambdas_and_closures_travel_with_cloudpickle(start_method: str) -> None:
    offset = 1000
    results = execute(lambda x: x + offset, range(20), n_jobs=2, start_method=start_method)
    assert results == [x + offset for x in range(20)]


def test_results_may_be_lambdas() -> None:
    results = execute(lambda x: (lambda: x), range(4), n_jobs=2)
    assert [r() for r in results] == [0, 1, 2, 3]


def test_n_jobs_1_runs_in_one_worker_process(no_leaked_children: None) -> None:
    # Issue 12: no user code in the caller unless backend="in_process" asks for it.
    pids = set(execute(pid_of, range(10), n_jobs=1))
    assert len(pids) == 1 and os.getpid() not in pids


def test_in_process_backend_runs_in_this_process() -> None:
    assert set(execute(pid_of, range(10), backend="in_process")) == {os.getpid()}


def test_n_jobs_1_with_a_timeout_uses_a_worker_process() -> None:
    assert os.getpid() not in set(execute(pid_of, range(10), n_jobs=1, timeout=30))


def test_work_is_spread_over_the_workers(no_leaked_children: None) -> None:
    pids = execute(lambda x: (time.sleep(0.01), os.getpid())[1], range(40), n_jobs=2, chunksize=1)
    assert len(set(pids)) == 2 and os.getpid() not in pids


# -- laziness and memory -------------------------------------------------------------------


def _counting(counter: List[int]) -> Iterator[int]:
    for i in itertools.count():
        counter[0] = i + 1
        yield i


def test_imap_reads_an_endless_input_with_bounded_look_ahead(no_leaked_children: None) -> None:
    consumed = [0]
    it = imap(double, _counting(consumed), n_jobs=2, chunksize=100)
    first = list(itertools.islice(it, 1000))
    assert first == [2 * x for x in range(1000)]
    # Ahead of the caller: a chunk per worker in flight, REORDER_CHUNKS_PER_WORKER per
    # worker waiting in order, the chunk the input thread is reading, the rest of the
    # segment the caller is in.
    ahead = (2 + 2 * REORDER_CHUNKS_PER_WORKER + 1 + 1) * 100
    assert consumed[0] <= 1000 + ahead, f"read {consumed[0]} items to produce 1000 results"
    it.close()  # stops the workers


def test_imap_with_growing_chunks_still_reads_an_endless_input_lazily(no_leaked_children: None) -> None:
    consumed = [0]
    it = imap(double, _counting(consumed), n_jobs=2)
    assert list(itertools.islice(it, 1000)) == [2 * x for x in range(1000)]
    # Chunks double as the sizer learns items are cheap, so how far ahead the input is
    # read depends on timing (3k-11k seen): bounded far below LOOKAHEAD_ITEMS_PER_WORKER.
    assert consumed[0] < 64_000, f"read {consumed[0]} items to produce 1000 results"
    it.close()


def test_imap_reads_nothing_before_the_first_next() -> None:
    consumed = [0]
    it = imap(double, _counting(consumed), n_jobs=2)
    assert consumed[0] == 0
    next(it)
    it.close()


def test_imap_look_ahead_stays_bounded_with_a_slow_consumer() -> None:
    consumed = [0]
    worst = 0
    it = imap(double, _counting(consumed), n_jobs=2, chunksize=10)
    for taken in range(1, 201):
        next(it)
        worst = max(worst, consumed[0] - taken)
    it.close()
    assert worst <= 10 * 2 * 5, f"ran {worst} items ahead of the consumer"


def test_imap_memory_does_not_grow_with_the_input() -> None:
    def peak_for(n: int) -> int:
        tracemalloc.start()
        try:
            for _ in imap(double, iter(range(n)), n_jobs=2, chunksize=2000):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_for(50_000), peak_for(400_000)
    # 8x the items; a run that kept its results or read ahead would need ~8x the memory.
    assert large < 2 * small + 2 * 2**20, (small, large)


# Run in a fresh interpreter whose peak RSS is the whole cost of the map: tracemalloc made
# the parent ~10x slower here (10M items took ~250 s), past any sane timeout on 2 cores. RSS
# counts everything tracemalloc did and more; a run that keeps its 10M results peaks at ~420 MiB.
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so the child would report pytest's.
TEN_MILLION_SCRIPT = """
import functools, operator
from amorsize import imap
count = sum(1 for _ in imap(functools.partial(operator.mul, 2), iter(range(10_000_000)), n_jobs=2))
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(count, peak_kib * 1024)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ten_million_items_in_bounded_memory() -> None:
    done = subprocess.run([sys.executable, "-c", TEN_MILLION_SCRIPT], capture_output=True, text=True,
                          timeout=280, check=False)
    assert done.returncode == 0, done.stderr
    count, peak = map(int, done.stdout.split())
    assert count == 10_000_000
    assert peak < 400 * 2**20, peak


# -- failures -----------------------------------------------------------------------------------


def test_failures_hold_their_positions_and_name_their_dlq_entries() -> None:
    dlq = memory_dlq()
    results = execute(fail_on_multiples_of_five, range(23), n_jobs=2, chunksize=4, dlq=dlq)
    entries = {e.entry_id: e for e in dlq.get_entries()}
    assert len(entries) == 5
    for i, value in enumerate(results):
        if i % 5:
            assert value == 2 * i
            continue
        assert isinstance(value, Failure) and is_failure(value) and not value
        assert value.error_type == "ValueError" and value.reason == "exception"
        entry = entries[value.entry_id]
        assert entry.item == i and entry.metadata["index"] == i
        assert entry.error_message == f"no multiples of five: {i}"
        assert "fail_on_multiples_of_five" in (entry.traceback or "")


def test_dlq_default_mode_records_and_continues(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))
    execute(fail_on_multiples_of_five, range(11), n_jobs=2, dlq=dlq)
    assert dlq.get_summary()["error_types"] == {"ValueError": 3}
    assert len(DeadLetterQueue(DLQPolicy(directory=str(tmp_path)))) == 3  # journaled


def test_raise_mode_is_the_default_without_a_dlq(no_leaked_children: None) -> None:
    # The worker's own exception type comes back, with the worker's traceback as its cause.
    with pytest.raises(ValueError, match=r"^no multiples of five: \d+$") as info:
        execute(fail_on_multiples_of_five, range(1, 40), n_jobs=2, chunksize=3)
    error = info.value
    assert type(error) is ValueError
    cause = error.__cause__
    assert cause is not None and "Traceback (most recent call last)" in str(cause)
    assert "fail_on_multiples_of_five" in str(cause)
    assert f"ValueError: {error}" in str(cause)


def test_raise_mode_lets_except_catch_the_workers_exception_type(
    start_method: str, no_leaked_children: None
) -> None:
    caught = None
    try:
        execute(lookup_missing, range(6), n_jobs=2, chunksize=2, start_method=start_method)
    except KeyError as exc:
        caught = exc
    assert caught is not None and caught.args == ("missing-3",)
    assert "lookup_missing" in str(caught.__cause__)


def test_raise_mode_with_an_unrebuildable_exception_raises_task_failed(no_leaked_children: None) -> None:
    copyreg.dispatch_table.pop(UnloadableError, None)  # undo tblib (installed by dask's import)
    with pytest.raises(TaskFailedError) as info:
        execute(raise_unloadable, range(4), n_jobs=2, chunksize=1)
    error = info.value
    assert isinstance(error, AmorsizeError)
    assert error.error_type.endswith("UnloadableError") and error.error_message == "item 2"
    assert "raise_unloadable" in (error.traceback_text or "")
    assert "Worker traceback" in str(error)


def test_raise_mode_in_process() -> None:
    with pytest.raises(RuntimeError, match="always 0") as info:
        execute(always_fails, range(3), backend="in_process")
    assert type(info.value) is RuntimeError
    frames = [frame.name for frame in info.traceback]
    assert "always_fails" in frames  # the real traceback: the call happened here


def test_raise_mode_can_be_asked_for_with_a_dlq() -> None:
    dlq = memory_dlq()
    with pytest.raises(RuntimeError, match="always") as info:
        execute(always_fails, range(3), n_jobs=2, dlq=dlq, on_failure="raise")
    # The failure is raised, not recorded: the DLQ stays as it was (README, on_failure).
    assert len(dlq) == 0
    assert str(info.value) in {f"always {i}" for i in range(3)}


def test_on_failure_callable_receives_each_entry() -> None:
    seen: List[DLQEntry] = []
    results = execute(fail_on_multiples_of_five, range(12), n_jobs=2, on_failure=seen.append)
    assert sorted(e.item for e in seen) == [0, 5, 10]
    assert all(isinstance(e, DLQEntry) and e.reason == "exception" for e in seen)
    assert [i for i, r in enumerate(results) if not is_failure(r)] == [
        i for i in range(12) if i % 5
    ]


def test_on_failure_callable_and_dlq_both_get_the_entry() -> None:
    dlq, seen = memory_dlq(), []
    execute(fail_on_multiples_of_five, range(7), n_jobs=2, dlq=dlq, on_failure=seen.append)
    assert len(seen) == len(dlq) == 2


def test_retry_policy_runs_in_the_worker() -> None:
    dlq = memory_dlq()
    retry = RetryPolicy(max_retries=2, initial_delay=0, jitter=False)
    execute(always_fails, range(4), n_jobs=2, retry=retry, dlq=dlq)
    assert [e.retry_count for e in dlq.get_entries()] == [2, 2, 2, 2]
    assert {e.metadata["attempts"] for e in dlq.get_entries()} == {3}


def test_shared_dlq_integration(tmp_path: Path, start_method: str) -> None:
    with SharedDeadLetterQueue(DLQPolicy(directory=str(tmp_path))) as dlq:
        results = execute(fail_on_multiples_of_five, range(16), n_jobs=2, chunksize=3, dlq=dlq,
                          start_method=start_method)
        assert sorted(e.item for e in dlq.get_entries()) == [0, 5, 10, 15]
        assert dlq.get_summary()["total_entries"] == 4
        ids = {e.entry_id for e in dlq.get_entries()}
    assert {r.entry_id for r in results if is_failure(r)} == ids


# -- progress ------------------------------------------------------------------------------------


def test_on_progress_counts_every_item_once() -> None:
    calls: List[Tuple[int, Any]] = []
    dlq = memory_dlq()
    execute(fail_on_multiples_of_five, range(53), n_jobs=2, chunksize=4, dlq=dlq,
            on_progress=lambda done, total: calls.append((done, total)))
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and dones[-1] == 53
    assert {t for _, t in calls} == {53}


def test_on_progress_total_is_none_for_a_generator() -> None:
    calls: List[Tuple[int, Any]] = []
    execute(double, iter(range(30)), n_jobs=1, on_progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (30, None)


def test_progress_bar_uses_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    assert execute(double, range(40), n_jobs=2, progress=True) == [2 * x for x in range(40)]
    err = capsys.readouterr().err
    assert "40/40" in err


def test_partial_functions_work(start_method: str) -> None:
    func = functools.partial(divmod, 100)
    assert execute(func, [1, 3, 7], n_jobs=2, start_method=start_method) == [
        divmod(100, d) for d in (1, 3, 7)
    ]
