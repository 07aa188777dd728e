"""Fault-test fixtures: a real full filesystem, and running code as an unprivileged user.

Not a conftest.py: the Dask plugin's tests import `conftest` by name, and a second
conftest module would shadow the root one. Test modules import these fixtures.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
import traceback
from typing import Any, Callable, Iterator

import pytest

#: Size of the tmpfs a full-disk test mounts: big enough for a few journal records,
#: small enough to fill in a few milliseconds.
TMPFS_BYTES = 256 * 1024
FILLER_NAME = "filler.bin"
UNPRIVILEGED_USER = "nobody"


class FullDisk:
    """A mounted tmpfs that :meth:`fill` makes full and :meth:`free` gives space back to."""

    def __init__(self, mountpoint: str) -> None:
        self.path = mountpoint
        self.filler = os.path.join(mountpoint, FILLER_NAME)

    def fill(self) -> None:
        """Write the filler until the filesystem says ENOSPC."""
        block = b"\0" * 4096
        with open(self.filler, "ab", buffering=0) as handle:
            while True:
                try:
                    handle.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        # Byte-sized leftovers: fill them too, so the disk is really full.
        with open(self.filler, "ab", buffering=0) as handle:
            try:
                while handle.write(b"\0"):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        """Give the space back (remove the filler)."""
        if os.path.exists(self.filler):
            os.unlink(self.filler)


@pytest.fixture(name="full_disk")
def full_disk_fixture() -> Iterator[FullDisk]:
    """A small real tmpfs mounted for this test (root only); unmounted in a finally."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine")
    mountpoint = tempfile.mkdtemp(prefix="amorsize-fulldisk-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", mountpoint],
        capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        os.rmdir(mountpoint)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield FullDisk(mountpoint)
    finally:
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=60)
        os.rmdir(mountpoint)


def _as_user_child(uid: int, gid: int, func: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        conn.send(("ok", func(*args)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


@pytest.fixture(name="run_as_unprivileged")
def run_as_unprivileged_fixture() -> Callable[..., Any]:
    """Call ``func(*args)`` in a forked child running as ``nobody``; return its result.

    A fork, not an exec: the interpreter lives under /root, which ``nobody`` cannot
    read, so the child keeps the already-imported amorsize and drops privileges.
    """
    if os.geteuid() != 0:
        pytest.skip("dropping to an unprivileged user needs root")
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        pytest.skip(f"no {UNPRIVILEGED_USER!r} user on this machine")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    ctx = multiprocessing.get_context("fork")

    def run(func: Callable[..., Any], *args: Any) -> Any:
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_as_user_child, args=(user.pw_uid, user.pw_gid, func, args, sender))
        child.start()
        sender.close()
        try:
            assert receiver.poll(120), "the unprivileged child did not answer within 120 s"
            status, value = receiver.recv()
        finally:
            child.join(60)
            if child.is_alive():
                child.kill()
                child.join(10)
            receiver.close()
        if status != "ok":
            raise AssertionError(f"the unprivileged child failed unexpectedly:\n{value}")
        return value

    return run


@pytest.fixture(name="traversable_dir")
def traversable_dir_fixture() -> Iterator[str]:
    """A fresh directory under /tmp that ``nobody`` can enter but not write (0755, root's)."""
    path = tempfile.mkdtemp(prefix="amorsize-unpriv-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
