"""An input list a forked worker already holds: its chunks travel as bounds, not items.

A worker forked after ``execute()`` received a list has a copy-on-write copy of
it. Pickling each chunk's items in the parent and unpickling them in the worker
would copy what both sides already hold; for tiny items that was a third of the
parent's time. Instead the run *lends* the list (:func:`lend`), the feeder cuts
:class:`InputSlice` views of it (the parent never touches the items, so it copies
none of their memory pages either), and the process pool sends a view as an
:class:`InheritedRange`, which a forked worker unpickles into its own slice
(:class:`InheritedItems`).

An item that could not have been sent is still dead-lettered as
``unpicklable_item``, as under spawn: the worker checks the slice with pickle
(then cloudpickle, as the parent would) before running it, and answers with the
first item that fails (:func:`first_unsendable`).

Only for ``execute()`` (the caller cannot change the list while it runs) and only
under fork; a view pickled any other way pickles as the list of its items.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cloudpickle

_lent: Dict[int, Sequence[Any]] = {}
_tokens = itertools.count(1)


def lend(sequence: Sequence[Any]) -> int:
    """Register ``sequence`` for workers forked from now on; returns its token."""
    token = next(_tokens)
    _lent[token] = sequence
    return token


def withdraw(token: int) -> None:
    """Forget a lent sequence (its run ended); workers forked later cannot resolve it."""
    _lent.pop(token, None)


class InputSlice(Sequence[Any]):
    """Positions ``start:stop`` of a lent input list, not copied (the parent's view)."""

    __slots__ = ("source", "start", "stop", "token")

    def __init__(self, source: Sequence[Any], token: int, start: int, stop: int) -> None:
        self.source, self.token, self.start, self.stop = source, token, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            begin, end, step = index.indices(len(self))
            if step != 1:
                return list(self)[index]
            return InputSlice(self.source, self.token, self.start + begin, self.start + max(begin, end))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("InputSlice index out of range")
        return self.source[self.start + index]

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.source, self.start, self.stop)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (InputSlice, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares by value, like a list

    def __repr__(self) -> str:
        return f"InputSlice({self.start}:{self.stop} of a lent input)"

    def __reduce__(self) -> Any:
        return list, (list(self),)  # sent any other way: the items themselves

    def bounds(self) -> InheritedRange:
        """What a process pool sends to a forked worker instead of the items."""
        return InheritedRange(self.token, self.start, self.stop)


class InheritedRange:
    """Unpickles, in a worker forked after :func:`lend`, as that worker's slice of the input."""

    __slots__ = ("start", "stop", "token")

    def __init__(self, token: int, start: int, stop: int) -> None:
        self.token, self.start, self.stop = token, start, stop

    def __reduce__(self) -> Any:
        return inherited_items, (self.token, self.start, self.stop)


class InheritedItems(List[Any]):
    """A worker's own slice of an inherited input (checked for sendability before it runs)."""


def inherited_items(token: int, start: int, stop: int) -> InheritedItems:
    source = _lent.get(token)
    if source is None:  # not a fork of the process that lent it: a bug, never silent
        raise RuntimeError(f"input {token} was not inherited by this worker (pid start method?)")
    return InheritedItems(itertools.islice(source, start, stop))


def first_unsendable(items: Sequence[Any]) -> Optional[Tuple[int, BaseException]]:
    """The first item the parent could not have pickled, and the error; None if all could.

    Mirrors the process pool's sending: pickle, then cloudpickle.
    """
    try:
        pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        return None
    except Exception:
        pass
    try:
        cloudpickle.dumps(list(items), protocol=pickle.HIGHEST_PROTOCOL)
        return None
    except Exception as error:
        whole = error
    for position, item in enumerate(items):
        try:
            cloudpickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            return position, _portable(error)
    return 0, _portable(whole)


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives the trip to the parent, else a TypeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return TypeError(f"{type(error).__name__}: {error}")
