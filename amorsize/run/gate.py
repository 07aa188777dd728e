"""The breaker gate: how many items the dispatcher may send now, given the circuit breaker.

The breaker's state is decided in the parent, from every worker's outcomes. While
it is CLOSED, at most as many items are in flight as failures it takes to open
it, so a failing service is not hammered by a whole pool's worth of calls. While
HALF_OPEN, one trial item at a time. While OPEN, items are dead-lettered without
a call (``on_open="dead_letter"``, reason ``circuit_open``) or held back until it
half-opens (``on_open="wait"``).
"""

from __future__ import annotations

from typing import Any, List, Optional

from amorsize.backends import ChunkTask
from amorsize.breaker import CircuitBreaker, CircuitState
from amorsize.dlq.entry import DLQEntry
from amorsize.errors import CircuitOpenError
from amorsize.failure import Failure

#: Gate verdict: the circuit is open; dead-letter the next chunk instead of running it.
REJECT = -1
#: Bounds of one hold while the circuit is open (seconds): short enough to notice
#: the half-open moment, long enough not to spin.
MIN_HOLD_SECONDS = 0.001
MAX_HOLD_SECONDS = 1.0


class Gate:
    """Admission of items to the pool under an optional circuit breaker."""

    def __init__(self, breaker: Optional[CircuitBreaker], on_open: str) -> None:
        self.breaker = breaker
        self.on_open = on_open
        self.in_flight = 0  # items submitted and not yet back

    def limit(self) -> Optional[int]:
        """Items the next chunk may hold: None (no limit), 0 (hold back) or :data:`REJECT`."""
        breaker = self.breaker
        if breaker is None:
            return None
        headroom = breaker.failures_until_open
        if headroom is None:
            return None
        if headroom > 0:  # CLOSED
            return max(0, headroom - self.in_flight)
        if breaker.state is CircuitState.HALF_OPEN:
            if self.in_flight == 0 and breaker.allow():
                return 1
            return 0
        return REJECT if self.on_open == "dead_letter" else 0

    def hold_seconds(self) -> float:
        """How long to wait before asking :meth:`limit` again after a hold."""
        assert self.breaker is not None
        return min(max(self.breaker.time_until_retry(), MIN_HOLD_SECONDS), MAX_HOLD_SECONDS)

    def observe(self, values: List[Any]) -> None:
        """Count a finished chunk's outcomes (a Failure value is a failure)."""
        breaker = self.breaker
        if breaker is None:
            return
        for value in values:
            if isinstance(value, Failure):
                breaker.record_failure(value.error_type)
            else:
                breaker.record_success()

    def failed(self, error_type: str) -> None:
        """Count one failure that came back without a chunk result (a lost item)."""
        if self.breaker is not None:
            self.breaker.record_failure(error_type)

    @staticmethod
    def rejected(task: ChunkTask, function_name: str) -> List[DLQEntry]:
        """The entries of a chunk not run because the circuit is open."""
        error = CircuitOpenError(
            "not called: the circuit breaker was open; replay this item once the service is back"
        )
        return [
            DLQEntry.from_exception(
                item, error, reason="circuit_open", include_traceback=False,
                metadata={"index": task.start + pos, "function": function_name},
            )
            for pos, item in enumerate(task.items)
        ]
