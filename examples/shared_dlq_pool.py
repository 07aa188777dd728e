"""Keep your own multiprocessing.Pool, and send its failures to a shared dead letter queue.

An ETL step parses CSV order rows. Some rows are malformed (a missing field, a
price that is not a number, a bad date); one flaky lookup fails now and then and
deserves a retry. The pool is a plain ``multiprocessing.Pool``: we only wrap the
function with ``dlq.capture(...)``. Then we read the summary, fix the parser, and
replay the failed rows.

    python examples/shared_dlq_pool.py

Writes only inside a temporary directory, which it removes.
"""

from __future__ import annotations

import csv
import datetime
import io
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
from typing import Dict, List, Tuple

# Run against the checkout this example lives in.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from amorsize import DLQPolicy, RetryPolicy, SharedDeadLetterQueue, is_failure, replay_failed_items

FIELDS = ["order_id", "customer", "country", "amount", "currency", "created"]
RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}


def make_rows(count: int, seed: int = 7) -> List[str]:
    """CSV lines, about 4% of them malformed in one of four ways."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        amount = f"{rng.uniform(5, 500):.2f}"
        created = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        currency = rng.choice(list(RATES))
        roll = rng.random()
        if roll < 0.015:
            amount = amount.replace(".", ",")  # a decimal comma splits the field in two
        elif roll < 0.03:
            created = f"{1 + i % 28:02d}/{1 + i % 12:02d}/2024"  # day-first, not ISO
        elif roll < 0.038:
            currency = ""  # a missing field
        elif roll < 0.04:
            amount = "n/a"  # nothing to recover
        rows.append(f"{i},customer {i % 97},{rng.choice(['FR', 'DE', 'US'])},{amount},{currency},{created}")
    return rows


class LookupTimeout(Exception):
    """A transient error: the currency service did not answer in time."""


def parse_order(line: str) -> Dict[str, object]:
    """Parse one CSV row into a clean record; raises on malformed rows."""
    (values,) = csv.reader(io.StringIO(line))
    row = dict(zip(FIELDS, values))
    if not row.get("currency"):
        raise KeyError(f"order {row['order_id']}: missing currency")
    if random.random() < 0.01:  # the flaky dependency
        raise LookupTimeout("currency service timed out")
    amount = float(row["amount"])  # ValueError on "12,50"
    created = datetime.date.fromisoformat(row["created"])  # ValueError on "31/02/2024"
    return {
        "order_id": int(row["order_id"]),
        "country": row["country"],
        "amount_eur": round(amount * RATES[row["currency"]], 2),
        "created": created.isoformat(),
    }


def parse_order_fixed(line: str) -> Dict[str, object]:
    """The fix: accept decimal commas and day-first dates; default the currency to EUR."""
    (values,) = csv.reader(io.StringIO(line))
    if len(values) == len(FIELDS) + 1:  # "12,50" split the amount in two
        values = [*values[:3], f"{values[3]}.{values[4]}", *values[5:]]
    row = dict(zip(FIELDS, values))
    created = row["created"]
    if "/" in created:
        day, month, year = created.split("/")
        created = f"{year}-{month}-{day}"
    return {
        "order_id": int(row["order_id"]),
        "country": row["country"],
        "amount_eur": round(float(row["amount"]) * RATES[row["currency"] or "EUR"], 2),
        "created": datetime.date.fromisoformat(created).isoformat(),
    }


def main() -> Tuple[int, int, int]:
    rows = make_rows(20_000)
    workdir = tempfile.mkdtemp(prefix="amorsize-example-")
    try:
        policy = DLQPolicy(directory=os.path.join(workdir, "failed"))
        retry = RetryPolicy(max_retries=2, initial_delay=0.01, retry_on=LookupTimeout)
        with SharedDeadLetterQueue(policy) as dlq:
            with multiprocessing.Pool(2) as pool:  # the pool you already have
                results = pool.map(dlq.capture(parse_order, retry=retry), rows, chunksize=250)

            good = [r for r in results if not is_failure(r)]
            print(f"parsed {len(good):,} of {len(rows):,} rows; {dlq.size()} went to the DLQ")
            summary = dlq.get_summary()
            print("by error type:", summary["error_types"])
            for group in summary["signatures"][:3]:  # messages that differ only by values group
                print(f"  {group['count']:4d} x {group['signature']}")
            example = dlq.get_entries()[0]
            print(f"first failure: row {example.item!r} from worker pid {example.metadata['pid']}, "
                  f"after {example.metadata['attempts']} attempt(s)")

            # ...fix the parser, then run only the failed rows again. The fix has another
            # name than parse_order, whose entries these are: function=None takes them.
            recovered, still_failed = replay_failed_items(dlq, parse_order_fixed, function=None)
            print(f"replay: recovered {len(recovered)}, still failing {len(still_failed)}, "
                  f"left in the DLQ {dlq.size()}")
            return len(good), len(recovered), len(still_failed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
