"""Files that survive a crash and keep their modes: atomic writes, private directories.

Used by the DLQ journal, the checkpoint and the optimizer's cost cache. Files are
created 0600 and directories 0700 whatever the umask.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_directory(directory: str) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_directory(directory: str) -> None:
    """Create ``directory`` (and parents) with mode 0700 if it is missing."""
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)


def write_atomically(path: str, lines: Iterable[bytes], *, prefix: str = ".dlq-") -> None:
    """Write ``lines`` to ``path`` by temp file, fsync and ``os.replace`` (mode 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    ensure_directory(directory)
    fd, temp_path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            for line in lines:
                handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, FILE_MODE)
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
    fsync_directory(directory)
