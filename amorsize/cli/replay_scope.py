"""What ``amorsize dlq replay`` runs: the entries of --func's own function, and a progress bar.

By default a replay takes only the entries recorded (``metadata["function"]``) for
a function with --func's qualified name, and says how many others it skipped and
for which functions (``--any-function`` takes them all). A tqdm bar on stderr shows
progress when stderr is a terminal (and tqdm is installed); piped, it stays off.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Iterable, Iterator, List, TypeVar

from amorsize.dlq.entry import DLQEntry
from amorsize.failure import function_name
from amorsize.replay import describe_skipped, split_by_function

T = TypeVar("T")


def for_function(args: argparse.Namespace, func: Callable[[Any], Any],
                 entries: List[DLQEntry]) -> List[DLQEntry]:
    """``entries`` recorded for ``func`` (all with ``--any-function``); prints what was skipped."""
    if getattr(args, "any_function", False):
        return entries
    wanted = function_name(func)
    kept, skipped = split_by_function(entries, wanted, getattr(func, "__qualname__", None))
    if skipped:
        print(f"skipped {describe_skipped(skipped)}, not {wanted}; --any-function replays "
              "them too", file=sys.stderr)
    return kept


def with_progress(outcomes: Iterable[T], total: int, *, stream: Any = None) -> Iterator[T]:
    """``outcomes`` unchanged, with a tqdm bar on ``stream`` (stderr) if it is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        yield from outcomes
        return
    try:
        from tqdm import tqdm
    except ImportError:  # the optional "progress" extra is not installed
        yield from outcomes
        return
    with tqdm(total=total, file=stream, unit="item", desc="replay", leave=True) as bar:
        for outcome in outcomes:
            bar.update(1)
            yield outcome
