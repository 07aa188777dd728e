"""The state a :class:`~amorsize.RateLimit` shares between processes: a private directory.

```
 <root>/amorsize-pacing-XXXXXXXX/      0700, made by mkdtemp in the creating process
     state      16 bytes, 0600: [tat: float64][paused_until: float64], mmap'ed,
                every read-modify-write under flock(LOCK_EX) on this file
     slot-0 ... slot-(n-1)             0600, empty; flock(LOCK_EX) on slot i = holding
                                       one of the max_concurrent slots
```

The rate is a GCRA ("generic cell rate algorithm"): one number, the theoretical
arrival time ``tat`` of the next call. A caller *reserves* its start time under
the lock (``start = max(now, tat - tau, paused_until)``, then ``tat = max(tat,
start) + interval``) and sleeps until then *outside* it, so waiting costs no CPU
and never holds the lock. ``tau = (burst - 1) * interval`` is how far ahead of the
schedule a burst may run after an idle period.

Why files: a ``multiprocessing.Lock`` cannot be handed to a pool task under spawn,
but a path can; flock locks die with their process, so a worker killed while
holding a concurrency slot gives it back; /dev/shm keeps it all in memory.

flock locks belong to an open file description, which a forked child shares with
its parent and threads share with each other. So every process opens its own
descriptors (keyed by pid), a thread lock orders the threads of one process around
the state lock, and each slot descriptor is used by one thread at a time.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import stat
import struct
import tempfile
import threading

from amorsize._fs import FILE_MODE
from amorsize.errors import InvalidArgumentError

#: Layout of the state file: theoretical arrival time, paused-until (clock seconds).
STATE_FORMAT = "<dd"
STATE_SIZE = struct.calcsize(STATE_FORMAT)
#: Name prefix of the private directories (so tests and users can spot leftovers).
DIR_PREFIX = "amorsize-pacing-"
#: Preferred parent directory: tmpfs, so the state never touches a disk.
SHM_ROOT = "/dev/shm"

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def state_root() -> str:
    """Where new state directories go: /dev/shm when usable, else the temp directory."""
    if os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK | os.X_OK):
        return SHM_ROOT
    return tempfile.gettempdir()


def create_state(slots: int, root: str | None = None) -> str:
    """Make a private state directory with ``slots`` slot files; return its path."""
    path = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=root or state_root())
    try:
        names = ["state"] + [f"slot-{i}" for i in range(slots)]
        for name in names:
            fd = os.open(os.path.join(path, name), _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                if name == "state":
                    os.write(fd, struct.pack(STATE_FORMAT, -1e300, -1e300))
            finally:
                os.close(fd)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def remove_state(path: str) -> None:
    """Delete a state directory we created (never following a symlink planted in it)."""
    shutil.rmtree(path, ignore_errors=True)


def _check_private(fd: int, path: str, kind: int) -> None:
    """Refuse state that is not ours alone: wrong owner, group/other access, wrong file type."""
    info = os.fstat(fd)
    if stat.S_IFMT(info.st_mode) != kind or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise InvalidArgumentError(
            f"rate limit state {path!r} is not a private {'directory' if kind == stat.S_IFDIR else 'file'}"
            f" owned by uid {os.getuid()} (mode {oct(info.st_mode & 0o777)}, uid {info.st_uid})"
        )


class ProcessState:
    """One process's open handles on a state directory (never shared across fork)."""

    def __init__(self, path: str, slots: int) -> None:
        self.pid = os.getpid()
        self.path = path
        self.lock = threading.Lock()
        self._slot_fds: list[int | None] = [None] * slots
        self._free = list(range(slots))
        self._slot_lock = threading.Lock()
        self._dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_private(self._dir_fd, path, stat.S_IFDIR)
            self._fd = self._open_file("state")
            self._map = mmap.mmap(self._fd, STATE_SIZE)
        except BaseException:
            os.close(self._dir_fd)
            raise

    def _open_file(self, name: str) -> int:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=self._dir_fd)
        try:
            _check_private(fd, os.path.join(self.path, name), stat.S_IFREG)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        """Close every descriptor (held slots are released with them)."""
        self._map.close()
        for fd in [self._fd, self._dir_fd, *(f for f in self._slot_fds if f is not None)]:
            os.close(fd)

    # --- the rate: GCRA reservation ----------------------------------------------

    def reserve(self, now: float, interval: float, tau: float, deadline: float | None) -> float | None:
        """Book the next start time (None, and nothing booked, if it would be after ``deadline``)."""
        with self.lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                tat, paused = struct.unpack_from(STATE_FORMAT, self._map)
                start = max(now, tat - tau, paused)
                if deadline is not None and start > deadline:
                    return None
                struct.pack_into(STATE_FORMAT, self._map, 0, max(tat, start) + interval, paused)
                return start
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def pause_until(self, until: float) -> None:
        """No call may start before ``until`` (a later pause wins over an earlier one)."""
        with self.lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                tat, paused = struct.unpack_from(STATE_FORMAT, self._map)
                struct.pack_into(STATE_FORMAT, self._map, 0, tat, max(paused, until))
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def paused_until(self) -> float:
        """The time before which no call may start (a past time when not paused)."""
        with self.lock:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                return float(struct.unpack_from(STATE_FORMAT, self._map)[1])
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    # --- max_concurrent: one flock'ed file per slot --------------------------------

    def try_slot(self) -> int | None:
        """Take a free concurrency slot without waiting; its index, or None if all are busy."""
        with self._slot_lock:
            candidates = list(self._free)
        # Start the scan at a per-process offset so processes do not all contend for slot 0.
        shift = self.pid % len(candidates) if candidates else 0
        for index in candidates[shift:] + candidates[:shift]:
            with self._slot_lock:
                if index not in self._free:
                    continue
                self._free.remove(index)
            fd = self._slot_fds[index]
            if fd is None:
                fd = self._slot_fds[index] = self._open_file(f"slot-{index}")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return index
            except BlockingIOError:
                with self._slot_lock:
                    self._free.append(index)
        return None

    def release_slot(self, index: int) -> None:
        """Give back slot ``index`` taken by :meth:`try_slot` in this process."""
        fd = self._slot_fds[index]
        assert fd is not None
        fcntl.flock(fd, fcntl.LOCK_UN)
        with self._slot_lock:
            self._free.append(index)
