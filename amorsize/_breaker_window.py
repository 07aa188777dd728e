"""The outcomes a closed circuit breaker remembers: failures in a row, and a sliding window.

:class:`~amorsize.breaker.CircuitBreaker` keeps one :class:`ClosedWindow` and asks it,
after each counted failure, whether the circuit should open. The window is cleared
on every state change, so it only ever describes the current CLOSED spell. Not
thread-safe on its own: the breaker calls it with its lock held.
"""

from __future__ import annotations

from collections import deque


class ClosedWindow:
    """Counts consecutive failures, and failures among the last ``size`` outcomes.

    Adding an outcome and asking :meth:`tripped` are O(1): the failure count of
    the window is kept up to date as outcomes enter and leave it.
    """

    __slots__ = ("_recent", "consecutive", "failures", "size")

    def __init__(self, size: int | None) -> None:
        """``size`` is the sliding window's length, or None for no window (no rate)."""
        self.size = size
        self.consecutive = 0  #: counted failures in a row
        self.failures = 0  #: failures among the outcomes in the window
        self._recent: deque[bool] = deque(maxlen=size or 1)  # True = failure

    def __len__(self) -> int:
        """Outcomes in the sliding window (at most ``size``)."""
        return len(self._recent)

    def add(self, failed: bool) -> None:
        """Record one outcome: a counted failure (True) or a success (False)."""
        self.consecutive = self.consecutive + 1 if failed else 0
        if self.size is None:
            return
        if len(self._recent) == self.size and self._recent[0]:
            self.failures -= 1
        self._recent.append(failed)
        self.failures += failed

    def tripped(self, threshold: int | None, rate: float | None) -> bool:
        """Whether ``threshold`` failures in a row, or a full window at ``rate``, was reached."""
        if threshold is not None and self.consecutive >= threshold:
            return True
        return (
            self.size is not None
            and rate is not None
            and len(self._recent) == self.size
            and self.failures >= rate * self.size
        )

    def clear(self) -> None:
        """Forget every outcome."""
        self.consecutive = 0
        self._recent.clear()
        self.failures = 0
