"""Checkpoint: resume a killed run without redoing the items it finished.

``execute(..., checkpoint=Checkpoint("run.ckpt"))`` records every finished run
of positions (its results, and the DLQ entry ids of its failures) and writes
them atomically (temp file, fsync, ``os.replace``) at most every
``every_seconds`` / ``every_items``, and when the run stops on an error or a
Ctrl-C. Run again with the same checkpoint, the finished positions are not
called again: their results come from the file, and their failures keep their
existing DLQ entries (entries carry the run's fingerprint, so none is added twice).

The checkpoint is bound to a fingerprint of ``func`` and of the inputs (their
count when known, and the first ``FINGERPRINT_ITEMS`` items); a mismatch raises
:class:`~amorsize.CheckpointMismatchError`. Results are stored as JSON; values JSON
cannot hold exactly are stored as cloudpickle and loaded only with ``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from amorsize._fs import FILE_MODE, write_atomically
from amorsize._validate import check_int, check_seconds, invalid_value
from amorsize.errors import CheckpointMismatchError
from amorsize.failure import Failure
from amorsize.serialization import decode_value, dumps, encode_value

#: How many leading input items the fingerprint covers (the count covers the rest).
FINGERPRINT_ITEMS = 1000
CHECKPOINT_VERSION = 1


def fingerprint(func: Any, head: List[Any], total: Optional[int]) -> str:
    """A digest of ``func`` (its cloudpickle bytes) and of the inputs."""
    digest = hashlib.sha256()
    digest.update(dumps(func))
    digest.update(repr(total).encode())
    for item in head:
        try:
            digest.update(pickle.dumps(item, protocol=4))
        except Exception:
            digest.update(dumps(item))
    return digest.hexdigest()[:32]


class Checkpoint:
    """Where and how often a run records its progress.

    Args:
        path: the checkpoint file (created with mode 0600).
        every_items: also save after this many newly finished items.
        every_seconds: save at most this often (default 30 s).
        keep: keep the file after a successful run (default: remove it).
        allow_pickle: allow loading results stored as cloudpickle.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        every_items: Optional[int] = None,
        every_seconds: Optional[float] = 30.0,
        *,
        keep: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise invalid_value("path", path, "a file path")
        every_items = check_int("every_items", every_items, 1, optional=True)
        every_seconds = check_seconds("every_seconds", every_seconds, optional=True)
        for name, flag in (("keep", keep), ("allow_pickle", allow_pickle)):
            if not isinstance(flag, bool):
                raise invalid_value(name, flag, "True or False")
        self.path = os.fspath(path)
        self.every_items = every_items
        self.every_seconds = every_seconds
        self.keep = keep
        self.allow_pickle = allow_pickle
        self.fingerprint: Optional[str] = None
        self._segments: Dict[int, List[Any]] = {}
        self._unsaved = 0
        self._last_save = time.monotonic()

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, every_seconds={self.every_seconds})"

    # -- used by execute() -----------------------------------------------------

    def bind(self, func: Any, items: Iterable[Any], total: Optional[int]) -> Iterator[Any]:
        """Fingerprint the run and load what a previous run finished.

        Returns the items to iterate (the fingerprinted head chained back in).

        Raises:
            CheckpointMismatchError: the file belongs to another function or input.
        """
        source = iter(items)
        head = list(itertools.islice(source, FINGERPRINT_ITEMS))
        self.fingerprint = fingerprint(func, head, total)
        if os.path.exists(self.path):
            self._load()
        return itertools.chain(head, source)

    def finished(self) -> List[Tuple[int, List[Any]]]:
        """The ``(start, values)`` segments a previous run finished, by start."""
        return sorted(self._segments.items())

    def record(self, start: int, values: List[Any]) -> None:
        """Note that positions ``start..`` finished with ``values``; save if it is time."""
        self._segments[start] = values
        self._unsaved += len(values)
        now = time.monotonic()
        due_items = self.every_items is not None and self._unsaved >= self.every_items
        due_time = self.every_seconds is not None and now - self._last_save >= self.every_seconds
        if due_items or due_time:
            self.save()

    def save(self) -> None:
        """Write the checkpoint now (atomically)."""
        segments = []
        for start, values in sorted(self._segments.items()):
            failures = [
                [pos, v.entry_id, v.error_type, v.error_message, v.reason]
                for pos, v in enumerate(values)
                if isinstance(v, Failure)
            ]
            plain = [None if isinstance(v, Failure) else v for v in values]
            codec, payload = encode_value(plain)
            segments.append({"start": start, "codec": codec, "values": payload, "failures": failures})
        document = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint,
                    "segments": segments}
        write_atomically(self.path, [json.dumps(document, separators=(",", ":")).encode()])
        os.chmod(self.path, FILE_MODE)
        self._unsaved = 0
        self._last_save = time.monotonic()

    def complete(self) -> None:
        """The run finished: remove the file unless ``keep``."""
        if self.keep:
            self.save()
        elif os.path.exists(self.path):
            os.unlink(self.path)

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                document = json.loads(handle.read())
        except ValueError as exc:
            raise CheckpointMismatchError(
                f"checkpoint {self.path!r} is unreadable ({exc}); delete it to start fresh"
            ) from None
        if not isinstance(document, dict):  # valid JSON, but not a checkpoint
            raise CheckpointMismatchError(
                f"checkpoint {self.path!r} is unreadable (not a checkpoint document); delete it "
                "to start fresh"
            )
        if document.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint {self.path!r} was written for another function or other inputs "
                f"(fingerprint {document.get('fingerprint')} != {self.fingerprint}); delete the "
                "file, or pass a different path, to start fresh"
            )
        for segment in document.get("segments", []):
            values = decode_value(segment["codec"], segment["values"],
                                  allow_pickle=self.allow_pickle)
            if not isinstance(values, list):
                raise CheckpointMismatchError(
                    f"checkpoint {self.path!r} stores results as pickle; pass "
                    "Checkpoint(..., allow_pickle=True) if you trust the file, or delete it"
                )
            for pos, entry_id, error_type, message, reason in segment.get("failures", []):
                values[pos] = Failure(entry_id, error_type, message, reason)
            self._segments[segment["start"]] = values
