"""Dead letter queue, six ways: keep what failed, look at it, fix the cause, run it again.

    python examples/dead_letter_queue_demo.py

Every scenario writes only under one temporary directory, removed at the end.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from amorsize import DeadLetterQueue, DLQPolicy, replay_failed_items


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)))


def parse_record(record: str) -> int:
    """The 'business logic': records are integers in text, and some are not."""
    return int(record)


# 1 ----------------------------------------------------------------------------------


def basic_usage(directory: str) -> None:
    """Failures go to the queue instead of stopping the run."""
    banner("1. Basic use")
    dlq = DeadLetterQueue(DLQPolicy(directory=directory))
    results = []
    for record in ["1", "2", "three", "4", "", "6"]:
        try:
            results.append(parse_record(record))
        except ValueError as exc:
            dlq.add(record, exc)  # works outside the except block too: the traceback travels with exc
    print(f"parsed {results}; {len(dlq)} records failed")
    for entry in dlq.get_entries():
        print(f"  {entry.item!r:9} {entry.error_type}: {entry.error_message}")
    summary = dlq.get_summary()
    print(f"summary: {summary['total_entries']} entries, by type {summary['error_types']}")
    dlq.close()


# 2 ----------------------------------------------------------------------------------


class TransientError(Exception):
    """A failure worth retrying (a timeout, a busy service)."""


def with_retry(directory: str) -> None:
    """Retry transient failures a few times; only what still fails is dead-lettered."""
    banner("2. With retry")
    rng = random.Random(7)

    def flaky_square(n: int) -> int:
        if n % 5 == 0:
            raise ValueError(f"{n} is a multiple of 5")  # permanent: retrying will not help
        if rng.random() < 0.5:
            raise TransientError(f"timeout while squaring {n}")
        return n * n

    def call_with_retry(func: Callable[[int], int], item: int, dlq: DeadLetterQueue,
                        max_retries: int = 3) -> Optional[int]:
        for attempt in range(max_retries + 1):
            try:
                return func(item)
            except TransientError as exc:
                if attempt == max_retries:
                    dlq.add(item, exc, retry_count=attempt)
                    return None
                time.sleep(0.001 * 2**attempt)  # exponential backoff (tiny for the demo)
            except Exception as exc:
                dlq.add(item, exc, retry_count=attempt)  # not retryable
                return None
        return None

    dlq = DeadLetterQueue(DLQPolicy(directory=directory))
    results = [call_with_retry(flaky_square, n, dlq) for n in range(1, 21)]
    print(f"{sum(r is not None for r in results)} of 20 succeeded; dead-lettered:")
    for entry in dlq.get_entries():
        print(f"  item {entry.item:2}: {entry.error_type} after {entry.retry_count} retries")
    print(f"average retries in the queue: {dlq.get_summary()['avg_retry_count']:.1f}")
    dlq.close()


# 3 ----------------------------------------------------------------------------------


def replay_after_fix(directory: str) -> None:
    """Fix the function, then run only the failed items again."""
    banner("3. Replay after a fix")
    dlq = DeadLetterQueue(DLQPolicy(directory=directory))
    for record in ["10", "12.0", "7.5", "thirteen", "20"]:
        try:
            parse_record(record)
        except ValueError as exc:
            dlq.add(record, exc)
    print(f"{len(dlq)} failed with the first version: {[e.item for e in dlq.get_entries()]}")

    def parse_record_v2(record: str) -> int:
        """Fixed: accept floats with no fractional part. Words still fail."""
        value = float(record)
        if not value.is_integer():
            raise ValueError(f"{record!r} is not a whole number")
        return int(value)

    recovered, still_failed = replay_failed_items(dlq, parse_record_v2)
    print(f"recovered {recovered}")
    for entry in still_failed:
        print(f"  still failing: {entry.item!r} -> {entry.error_type}: {entry.error_message} "
              f"(retry_count {entry.retry_count})")
    print(f"left in the queue: {[e.item for e in dlq.get_entries()]}")
    dlq.close()


# 4 ----------------------------------------------------------------------------------


def persistence_and_monitoring(directory: str) -> None:
    """A restarted program sees earlier failures; the journal is readable JSON lines."""
    banner("4. Persistence and monitoring")
    first_run = DeadLetterQueue(DLQPolicy(directory=directory))
    for order_id, problem in [(101, KeyError("sku-9")), (102, TimeoutError("warehouse API")),
                              (103, KeyError("sku-4"))]:
        first_run.add({"order_id": order_id}, problem, metadata={"stage": "reserve"})
    first_run.close()  # ... the process exits, or is killed: every add is already on disk

    restarted = DeadLetterQueue(DLQPolicy(directory=directory))
    summary = restarted.get_summary()
    print(f"after restart: {summary['total_entries']} entries, {summary['error_types']}")
    print(f"most common messages: {summary['top_messages']}")
    print(f"KeyErrors only: {[e.item['order_id'] for e in restarted.filter(error_type='KeyError')]}")
    journal = os.path.join(directory, "dlq.jsonl")
    with open(journal, encoding="ascii") as handle:
        record = json.loads(handle.readline())
    print(f"{journal} holds one JSON record per line, e.g. "
          f"item={record['item']} error={record['error_type']}: {record['error_message']}")
    restarted.close()


# 5 ----------------------------------------------------------------------------------


def size_limits(directory: str) -> None:
    """max_entries bounds the queue: the oldest entries are dropped, and counted."""
    banner("5. Size limits")
    dlq = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=5))
    for n in range(12):
        dlq.add(n, ValueError(f"bad {n}"))
    print(f"kept {[e.item for e in dlq.get_entries()]} (the newest 5); "
          f"pruned {dlq.get_summary()['pruned']}")
    dlq.close()


# 6 ----------------------------------------------------------------------------------


class HTTPError(Exception):
    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} for {url}")
        self.status = status


class FakeAPI:
    """A simulated API: some users do not exist (404), and it is sometimes overloaded (503)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.overloaded = True

    def get_user(self, user_id: int) -> Dict[str, Any]:
        url = f"/users/{user_id}"
        if user_id % 7 == 0:
            raise HTTPError(404, url)  # permanent
        if self.overloaded and self.rng.random() < 0.3:
            raise HTTPError(503, url)  # transient
        return {"id": user_id, "name": f"user{user_id}"}


def api_processing(directory: str) -> None:
    """Retry what is transient, dead-letter the rest with context, replay when the API is back."""
    banner("6. Real-world pattern: calling a flaky API")
    api = FakeAPI(seed=3)
    dlq = DeadLetterQueue(DLQPolicy(directory=directory))
    fetched: List[Dict[str, Any]] = []
    for user_id in range(1, 41):
        for attempt in range(3):
            try:
                fetched.append(api.get_user(user_id))
                break
            except HTTPError as exc:
                if exc.status < 500 or attempt == 2:  # 4xx: do not retry; 5xx: give up after 3 tries
                    dlq.add(user_id, exc, retry_count=attempt,
                            metadata={"status": exc.status, "endpoint": "/users"})
                    break
                time.sleep(0.001)
    statuses: Dict[int, int] = {}
    for entry in dlq.get_entries():
        statuses[entry.metadata["status"]] = statuses.get(entry.metadata["status"], 0) + 1
    print(f"fetched {len(fetched)} users; dead-lettered by status: {statuses}")

    api.overloaded = False  # later: the API has recovered
    recovered, still_failed = replay_failed_items(dlq, api.get_user)
    print(f"replay: recovered {len(recovered)}, still failing {len(still_failed)} "
          f"({sorted({e.error_message for e in still_failed})[:2]} ...)")
    print("the 404s stay in the queue for a human to look at:",
          [e.item for e in dlq.filter(predicate=lambda e: "404" in e.error_message)])
    dlq.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="amorsize-dlq-demo-") as root:
        basic_usage(os.path.join(root, "basic"))
        with_retry(os.path.join(root, "retry"))
        replay_after_fix(os.path.join(root, "replay"))
        persistence_and_monitoring(os.path.join(root, "persistence"))
        size_limits(os.path.join(root, "limits"))
        api_processing(os.path.join(root, "api"))
    print("\nAll six scenarios ran; the temporary directory has been removed.")


if __name__ == "__main__":
    main()
