"""Stop hammering a service that is down, and replay what was skipped once it is back.

A flaky "inventory service" goes down half-way through a batch. The circuit
breaker opens after 5 failures; the remaining records are dead-lettered with
reason ``circuit_open`` without being sent. When the service is back, a replay
recovers every one of them.

Run: python examples/circuit_breaker_service.py
"""

from __future__ import annotations

import tempfile
import time

from amorsize import (
    CircuitBreaker,
    DeadLetterQueue,
    DLQPolicy,
    RetryPolicy,
    execute,
    replay_failed_items,
)

SERVICE_UP = {"value": True}
SENT = []


def update_inventory(record: dict) -> str:
    """Pretend to call a remote service; it fails fast while it is down."""
    SENT.append(record["sku"])
    if not SERVICE_UP["value"] and record["sku"] >= 40:
        raise ConnectionError("inventory service: 503 Service Unavailable")
    time.sleep(0.001)
    return f"sku-{record['sku']}: ok"


def main() -> None:
    records = [{"sku": n, "qty": n % 5} for n in range(100)]
    with tempfile.TemporaryDirectory() as directory:
        dlq = DeadLetterQueue(DLQPolicy(directory=directory))
        breaker = CircuitBreaker(failure_threshold=5, reset_timeout=60)
        SERVICE_UP["value"] = False
        # n_jobs=1 runs in this process, so the SENT log above sees every call.
        results = execute(update_inventory, records, n_jobs=1, dlq=dlq,
                          retry=RetryPolicy(max_retries=1, initial_delay=0.01),
                          circuit_breaker=breaker, on_open="dead_letter")
        print(f"sent {len(SENT)} requests for {len(records)} records; breaker is {breaker.state.value}")
        print("dead letters by reason:", dlq.get_summary()["reasons"])
        ok = sum(1 for r in results if r)
        assert ok + len(dlq) == len(records)  # nothing lost

        SERVICE_UP["value"] = True  # ...the service is back
        recovered, still_failed = replay_failed_items(dlq, update_inventory)
        print(f"replay recovered {len(recovered)}, still failing {len(still_failed)}")
        assert len(dlq) == 0


if __name__ == "__main__":
    main()
