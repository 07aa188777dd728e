"""Alerts: call a user's function when entries arrive, rate-limited, never failing a run.

``DeadLetterQueue(on_add=callback, alert_every_seconds=None)`` calls
``callback(entry, count)`` after each add, outside the queue's lock:

* without ``alert_every_seconds``, once per new entry with ``count == 1``;
* with it, at most once per interval: the first entry of a flood alerts at once,
  the next ones are counted, and a timer makes the next call when the interval
  is over, with the newest entry and ``count``, the number of entries added since
  the previous call. Closing the queue delivers what is still counted.

A callback that raises is logged (``amorsize.dlq`` logger, with its traceback)
and never raised into the run that added the entry.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Sequence

from amorsize._validate import check_callable, check_seconds

logger = logging.getLogger("amorsize.dlq")

AlertCallback = Callable[[Any, int], Any]


class Alerter:
    """Delivers new entries to ``callback`` under the rate limit (thread-safe)."""

    def __init__(self, callback: AlertCallback, every_seconds: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.callback = check_callable("on_add", callback, "a callable(entry, count) or None")
        self.every = check_seconds("alert_every_seconds", every_seconds, optional=True)
        self.clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        self._latest: Any = None
        self._last_call: float | None = None
        self._timer: threading.Timer | None = None

    def notify(self, entries: Sequence[Any]) -> None:
        """Call after ``entries`` were added, with no queue lock held."""
        self.notify_counted(entries, len(entries))

    def notify_counted(self, entries: Sequence[Any], count: int) -> None:
        """:meth:`notify` for ``count`` entries of which only ``entries`` (the newest) are known."""
        if not entries:
            return
        if self.every is None:
            for entry in entries:
                self._deliver(entry, 1)
            return
        with self._lock:
            self._pending += count
            self._latest = entries[-1]
            now = self.clock()
            if self._last_call is not None and now - self._last_call < self.every:
                if self._timer is None:
                    self._timer = threading.Timer(self._last_call + self.every - now, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            entry, count = self._take(now)
        self._deliver(entry, count)

    def flush(self) -> None:
        """Deliver what is still counted (the end of an interval, and on close)."""
        with self._lock:
            timer, self._timer = self._timer, None
            if timer is not None and timer is not threading.current_thread():
                timer.cancel()
            if not self._pending:
                return
            entry, count = self._take(self.clock())
        self._deliver(entry, count)

    def _take(self, now: float) -> tuple[Any, int]:
        entry, count = self._latest, self._pending
        self._pending, self._latest, self._last_call = 0, None, now
        return entry, count

    def _deliver(self, entry: Any, count: int) -> None:
        try:
            self.callback(entry, count)
        except Exception:
            logger.exception("DLQ on_add callback %r failed (the entry is kept)", self.callback)


def make_alerter(on_add: AlertCallback | None, every_seconds: float | None) -> Alerter | None:
    """An :class:`Alerter`, or None when there is no callback (and no interval)."""
    if on_add is None:
        check_seconds("alert_every_seconds", every_seconds, optional=True)
        return None
    return Alerter(on_add, every_seconds)


#: How often a SharedDeadLetterQueue's parent asks its manager for new entries.
SHARED_ALERT_POLL_SECONDS = 0.2
#: New entries the manager keeps for the parent between two polls; more are only counted.
SHARED_ALERT_BUFFER = 1000


class NewEntryBuffer:
    """In the manager process: the entries added since the parent last asked (bounded)."""

    def __init__(self, size: int = SHARED_ALERT_BUFFER) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[Any] = collections.deque(maxlen=size)
        self._count = 0

    def __call__(self, entry: Any, count: int) -> None:
        with self._lock:
            self._entries.append(entry)
            self._count += count

    def take(self) -> tuple[list[Any], int]:
        """``(the newest entries kept, how many were added)`` since the last take."""
        with self._lock:
            entries, count = list(self._entries), self._count
            self._entries.clear()
            self._count = 0
        return entries, count


class AlertWatch:
    """In the parent: polls ``take()`` on a daemon thread and feeds an :class:`Alerter`."""

    def __init__(self, take: Callable[[], tuple[list[Any], int]], alerter: Alerter,
                 interval: float = SHARED_ALERT_POLL_SECONDS) -> None:
        self._take, self.alerter, self.interval = take, alerter, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amorsize-dlq-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Deliver what the manager collected; a manager that is gone ends the watch."""
        try:
            entries, count = self._take()
        except Exception as exc:  # the manager stopped: nothing more will arrive
            logger.debug("DLQ alert watch stopped: %s: %s", type(exc).__name__, exc)
            self._stop.set()
            return
        if entries and self.alerter.every is None and count > len(entries):
            # More arrived than the manager kept: the first call carries the ones not kept.
            self.alerter._deliver(entries[0], 1 + count - len(entries))
            entries = entries[1:]
            count = len(entries)
        self.alerter.notify_counted(entries, count)

    def stop(self) -> None:
        """A last poll (call it before the manager stops), then end the thread."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.poll()
        self.alerter.flush()
