"""The feeder: reads the input so the dispatcher never blocks on ``next(items)``.

An input of unknown length (a generator, a file, a socket) is read by a daemon
thread, on demand: it reads only the items the chunker asked for (so the buffer
is bounded by a chunk and the input stays lazy); the dispatcher takes what is
there and goes back to its pool, so timeouts, crash detection, result delivery and Ctrl-C work while
the input is slow. An input of known length (a list, a range) cannot block and
is read directly; a list or tuple is cut by slicing (a copy in C, not an item at
a time). An exception from the input is kept and reported after every item read
before it (:attr:`Feeder.error`).
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any, Deque, Iterator, List, Optional, Sequence

from amorsize.backends.inherited import InputSlice


class Feeder:
    """Items from ``source``: read by a thread when ``threaded``, else directly.

    ``sequence``: the list or tuple ``source`` iterates, to be sliced instead.
    """

    def __init__(self, source: Iterator[Any], *, threaded: bool,
                 sequence: Optional[Sequence[Any]] = None) -> None:
        self.source = source
        self.error: Optional[BaseException] = None
        self._ended = False  # the source is exhausted or raised
        self._threaded = threaded
        self._sequence = None if threaded else sequence
        self._position = 0  # of the next item to slice from ``sequence``
        #: A take of the whole list returns the list itself, not a copy: set for one
        #: in-process chunk over the whole input (run.plan.in_one_chunk), which then
        #: iterates the caller's list as a list comprehension would.
        self.lend_whole = False
        #: The token of the input lent to forked workers (amorsize.backends.inherited):
        #: chunks are then views of the list, sent as their bounds.
        self.lent: Optional[int] = None
        if not threaded:
            return
        self._buffer: Deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._demand = 0  # items asked for and not yet read: the input stays lazy
        self._wanted = threading.Event()
        self._ready = threading.Event()
        self._closed = False
        threading.Thread(target=self._read, name="amorsize-feeder", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self._wanted.wait()
                if self._closed:
                    return
                with self._lock:
                    if self._demand <= 0:
                        self._wanted.clear()
                        continue
                try:
                    item = next(self.source)
                except StopIteration:
                    return
                with self._lock:
                    self._buffer.append(item)
                    self._demand -= 1
                self._ready.set()
        except BaseException as exc:  # the input's error, reported after its items
            self.error = exc
        finally:
            self._ended = True
            self._ready.set()

    @property
    def finished(self) -> bool:
        """The input ended (or raised) and every item read has been taken."""
        return self._ended and (not self._threaded or not self._buffer)

    def unread(self) -> int:
        """Items read from the input and not taken yet (a run that stops early counts them)."""
        if not self._threaded:
            return 0
        with self._lock:
            return len(self._buffer)

    def take(self, n: int) -> List[Any]:
        """Up to ``n`` items, without waiting for more than are ready; asks for the rest."""
        if not self._threaded:
            if self._ended:
                return []
            if self._sequence is not None:
                return self._slice(n)
            try:
                items = list(itertools.islice(self.source, n))
            except Exception as exc:  # a sized input whose iterator raised: same rule
                self.error, self._ended = exc, True
                return []
            if len(items) < n:
                self._ended = True
            return items
        with self._lock:
            buffer = self._buffer
            out = [buffer.popleft() for _ in range(min(n, len(buffer)))]
            if len(out) < n and not self._ended:
                self._demand = max(self._demand, n - len(out))
                self._wanted.set()
        return out

    def _slice(self, n: int) -> List[Any]:
        sequence, begin = self._sequence, self._position
        assert sequence is not None
        if self.lend_whole and begin == 0 and n >= len(sequence) and type(sequence) is list:
            self._position, self._ended = len(sequence), True
            return sequence
        if self.lent is not None:  # workers hold the list: a view, the items untouched
            stop = min(begin + n, len(sequence))
            self._position, self._ended = stop, stop >= len(sequence)
            return InputSlice(sequence, self.lent, begin, stop)  # type: ignore[return-value]
        items = sequence[begin:begin + n]
        self._position = begin + len(items)
        if self._position >= len(sequence):
            self._ended = True
        return items if type(items) is list else list(items)

    @property
    def sequence(self) -> Optional[Sequence[Any]]:
        """The list or tuple this feeder slices (None: it reads an iterator)."""
        return self._sequence

    def take_exactly(self, n: int) -> List[Any]:
        """``n`` items (fewer only at the end of the input), waiting for them."""
        out: List[Any] = []
        while len(out) < n and not self.finished:
            out.extend(self.take(n - len(out)))
            if len(out) < n:
                self.wait(None)
        return out

    def wait(self, timeout: Optional[float]) -> None:
        """Wait until an item is ready or the input ended (at most ``timeout`` seconds)."""
        if not self._threaded:
            return
        self._ready.clear()
        if self._buffer or self._ended:
            return
        self._ready.wait(timeout)

    def close(self) -> None:
        """Let the thread go at its next item (it is a daemon: a stuck input keeps it)."""
        if self._threaded:
            self._closed = True
            self._wanted.set()
