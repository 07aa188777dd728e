"""Alerts from a dead letter queue: a log line per failure, and a rate-limited webhook.

    python examples/dlq_alerts.py

``on_add`` is called after each add, outside the queue's lock; an exception in it
is logged and never stops the run. With ``alert_every_seconds`` a flood of
failures makes at most one call per interval, carrying how many arrived. The
webhook here is the local test service (tests/_http_service.py) on 127.0.0.1;
point it at your own alerting endpoint instead.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]

from _http_service import HTTPService, get  # noqa: E402

from amorsize import DeadLetterQueue, DLQEntry, DLQPolicy, execute  # noqa: E402

log = logging.getLogger("etl.alerts")


def parse(record: str) -> int:
    return int(record)


def log_line(entry: DLQEntry, count: int) -> None:
    """One WARNING per new entry, grouped by its failure signature."""
    log.warning("dead-lettered %r: %s", entry.item, entry.signature)


def webhook(url: str):
    def post(entry: DLQEntry, count: int) -> None:
        query = urllib.parse.urlencode({"count": count, "signature": entry.signature})
        get(f"{url}/alert?{query}", timeout=5)
    return post


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    records = ["1", "two", "3", "fo ur"] + [f"bad{i}" for i in range(200)]
    with tempfile.TemporaryDirectory() as tmp, HTTPService(rate=1000, burst=100) as service:
        print("1. a log line per failure")
        dlq = DeadLetterQueue(DLQPolicy(directory=os.path.join(tmp, "a")), on_add=log_line)
        execute(parse, records[:4], dlq=dlq, n_jobs=1)
        dlq.close()

        print("2. a webhook, at most one call per 0.5 s, for 202 failures")
        dlq = DeadLetterQueue(DLQPolicy(directory=os.path.join(tmp, "b")),
                              on_add=webhook(service.url), alert_every_seconds=0.5)
        started = time.monotonic()
        execute(parse, records, dlq=dlq, n_jobs=1)
        dlq.close()  # delivers what is still counted
        calls = len(service.hits)
        print(f"   {len(dlq)} entries in {time.monotonic() - started:.2f} s -> {calls} webhook "
              f"call(s); statuses {service.statuses()}")
        assert 1 <= calls <= 4, calls


if __name__ == "__main__":
    main()
