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

Before the first call of ``func``, :meth:`Checkpoint.bind` checks the file can be
written: its directory is created 0700 (or must not be group- or world-writable),
the checkpoint must not be a symlink, and a probe file is created, written,
replaced and removed. Any content of the file either loads or raises
``CheckpointMismatchError`` saying how to start fresh (:mod:`amorsize._checkpoint_file`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from typing import Any

from amorsize._checkpoint_file import CHECKPOINT_VERSION, read_segments
from amorsize._fs import private_directory, refuse_symlink, write_atomically, write_probe
from amorsize._validate import check_int, check_seconds, invalid_value
from amorsize.failure import Failure
from amorsize.serialization import dumps, encode_value

#: How many leading input items the fingerprint covers (the count covers the rest).
FINGERPRINT_ITEMS = 1000


def fingerprint(func: Any, head: list[Any], total: int | None) -> str:
    """A digest of ``func`` (its cloudpickle bytes) and of the inputs.

    A function or item that cannot be pickled (it holds a lock or a connection; the
    threads and in-process backends never pickle them) is fingerprinted by what
    identifies it across runs instead (:func:`_identity`), never by its address.
    """
    digest = hashlib.sha256()
    try:
        digest.update(dumps(func))
    except Exception:
        digest.update(_identity(func))
    digest.update(repr(total).encode())
    for item in head:
        try:
            digest.update(pickle.dumps(item, protocol=4))
        except Exception:
            try:
                digest.update(dumps(item))
            except Exception:
                digest.update(_identity(item))
    return digest.hexdigest()[:32]


def _identity(value: Any) -> bytes:
    """Module, qualified name and bytecode of an unpicklable function; the type of anything else."""
    code = getattr(value, "__code__", None)
    kind = value if code is not None else type(value)
    name = f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"
    return name.encode() + (code.co_code if code is not None else b"")


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
        path: str | os.PathLike[str],
        every_items: int | None = None,
        every_seconds: float | None = 30.0,
        *,
        keep: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise invalid_value("path", path, "a file path")
        for name, flag in (("keep", keep), ("allow_pickle", allow_pickle)):
            if not isinstance(flag, bool):
                raise invalid_value(name, flag, "True or False")
        self.path = os.fspath(path)
        self.every_items = check_int("every_items", every_items, 1, optional=True)
        self.every_seconds = check_seconds("every_seconds", every_seconds, optional=True)
        self.keep = keep
        self.allow_pickle = allow_pickle
        self.fingerprint: str | None = None
        self._segments: dict[int, list[Any]] = {}
        self._unsaved = 0
        self._last_save = time.monotonic()

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, every_seconds={self.every_seconds})"

    # -- used by execute() -----------------------------------------------------

    def bind(self, func: Any, items: Iterable[Any], total: int | None) -> Iterator[Any]:
        """Fingerprint the run and load what a previous run finished.

        Returns the items to iterate (the fingerprinted head chained back in).

        Raises:
            CheckpointMismatchError: the file belongs to another function or input.
        """
        source = iter(items)
        head = list(itertools.islice(source, FINGERPRINT_ITEMS))
        self.fingerprint = fingerprint(func, head, total)
        self.preflight()
        if os.path.lexists(self.path):
            self._segments.update(
                read_segments(self.path, self.fingerprint, total, allow_pickle=self.allow_pickle)
            )
        return itertools.chain(head, source)

    def preflight(self) -> None:
        """Check the checkpoint can be written, before any item runs.

        Raises:
            StorageError: the path is a symlink, its directory is not a private
                writable directory, or the write probe failed (e.g. the disk is full).
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        private_directory(directory, "checkpoint directory", owner=False)
        refuse_symlink(self.path, "checkpoint")
        write_probe(directory, "checkpoint directory")

    def finished(self) -> list[tuple[int, list[Any]]]:
        """The ``(start, values)`` segments a previous run finished, by start."""
        return sorted(self._segments.items())

    def record(self, start: int, values: list[Any]) -> None:
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
        write_atomically(
            self.path, [json.dumps(document, separators=(",", ":")).encode()], prefix=".ckpt-"
        )
        self._unsaved = 0
        self._last_save = time.monotonic()

    def complete(self) -> None:
        """The run finished: remove the file unless ``keep``."""
        if self.keep:
            self.save()
        elif os.path.exists(self.path):
            os.unlink(self.path)
