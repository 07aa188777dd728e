"""Checkpoint glue: what a resumed run skips, what it records, and when it saves.

On resume, the checkpoint's finished ranges are yielded as they were (no item
of them runs again) and read past in the input (the chunker's skip ranges).
Items the killed run had dead-lettered after its last save run again; if they
fail again, the DLQ entry already there is kept instead of a duplicate. The
checkpoint is saved only after the DLQ is flushed, so the file never claims a
failure whose entry could still be lost.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from amorsize.checkpoint import Checkpoint
from amorsize.dlq.entry import DLQEntry
from amorsize.failure import failure_of


class Resume:
    """The checkpoint side of one run; every method is a no-op without a checkpoint."""

    def __init__(self, checkpoint: Optional[Checkpoint], dlq: Any) -> None:
        self.checkpoint = checkpoint
        self.finished: List[Tuple[int, List[Any]]] = []
        self.known: Dict[int, DLQEntry] = {}
        self._dlq = dlq

    def bind(
        self, func: Callable[[Any], Any], source: Iterator[Any], total: Optional[int]
    ) -> Iterator[Any]:
        """Bind the checkpoint to this run; the input to read from now on."""
        checkpoint = self.checkpoint
        if checkpoint is None:
            return source
        source = checkpoint.bind(func, source, total)
        self.finished = list(checkpoint.finished())
        if self._dlq is not None:
            run = checkpoint.fingerprint
            for entry in self._dlq.filter(predicate=lambda e: e.metadata.get("run") == run):
                self.known[entry.metadata.get("index")] = entry
        return source

    def skip_ranges(self) -> List[Tuple[int, int]]:
        """Position ranges ``[begin, end)`` finished by the killed run."""
        return [(start, start + len(values)) for start, values in self.finished]

    def record(self, start: int, values: List[Any]) -> None:
        if self.checkpoint is not None:
            self.checkpoint.record(start, values)

    def fresh(self, entries: List[DLQEntry], values: List[Any], start: int) -> List[DLQEntry]:
        """``entries`` minus failures the killed run already dead-lettered.

        ``values`` (the chunk's results from ``start``) get the kept entry's Failure.
        """
        checkpoint = self.checkpoint
        if checkpoint is None:
            return entries
        fresh = []
        for entry in entries:
            index = entry.metadata["index"]
            known = self.known.get(index)
            if known is not None:
                values[index - start] = failure_of(known)
                continue
            entry.metadata["run"] = checkpoint.fingerprint
            fresh.append(entry)
        return fresh

    def finish(self, ok: bool) -> None:
        """Call after the DLQ is flushed: complete the checkpoint, or save it to resume."""
        if self.checkpoint is None:
            return
        if ok:
            self.checkpoint.complete()
        else:
            self.checkpoint.save()
