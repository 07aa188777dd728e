"""The rescue file: where a queue's unwritten entries go when ``flush()``/``close()`` must fail.

A full disk or a directory that turned read-only must not lose acknowledged
entries at exit. Before ``flush()``/``close()`` raise
:class:`~amorsize.DLQPersistError`, the entries still only in memory are written
to a new private file (mode 0600, ``O_EXCL``) in the first writable temporary
directory, named in the error; ``DeadLetterQueue.load(path)`` reads it back.
"""

from __future__ import annotations

import os
import tempfile
from typing import List, Sequence

from amorsize.errors import DLQPersistError

RESCUE_PREFIX = "amorsize-dlq-rescue-"


def _candidate_directories(avoid: str) -> List[str]:
    """Temporary directories to try, the ones not on the failing directory first."""
    seen: List[str] = []
    for directory in (tempfile.gettempdir(), "/var/tmp", "/dev/shm", os.path.expanduser("~")):
        if directory and os.path.isdir(directory) and directory not in seen:
            seen.append(directory)
    real_avoid = os.path.realpath(avoid) + os.sep
    return sorted(seen, key=lambda d: (os.path.realpath(d) + os.sep).startswith(real_avoid))


def write_rescue_file(lines: Sequence[bytes], avoid: str) -> str | None:
    """Write ``lines`` to a new 0600 rescue file; its path, or None if no directory took it."""
    data = b"".join(lines)
    for directory in _candidate_directories(avoid):
        try:
            fd, path = tempfile.mkstemp(prefix=RESCUE_PREFIX, suffix=".jsonl", dir=directory)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return path
        except OSError:
            try:
                os.unlink(path)
            except OSError:
                pass
    return None


def persist_error(lines: Sequence[bytes], directory: str, cause: str) -> DLQPersistError:
    """The error ``flush()``/``close()`` raise, after saving ``lines`` to a rescue file."""
    rescue = write_rescue_file(lines, directory)
    count = len(lines)
    if rescue is None:
        return DLQPersistError(
            f"{count} DLQ entries could not be written to the DLQ directory {directory} ({cause}), "
            "nor to a rescue file in any temporary directory; they are only in memory: "
            "free space or fix the directory and call flush() again"
        )
    return DLQPersistError(
        f"saved {count} unwritten DLQ entries to the rescue file {rescue} (mode 0600): they "
        f"could not be written to the DLQ directory {directory} ({cause}). They stay in memory "
        "and are written by the next flush() that succeeds; or load them later with "
        "DeadLetterQueue.load(<rescue file>)",
        rescue,
    )
