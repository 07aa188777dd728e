"""Files that survive a crash, keep their modes and never follow a planted symlink.

Used by the DLQ journal, the checkpoint, the CLI's exports and lock, and the
optimizer's cost cache. Files are created 0600 and directories 0700 whatever the
umask. Every open of a file we write uses ``O_NOFOLLOW`` (``O_EXCL`` for new
ones), so a symlink where one of our files goes is refused, never a way to read
or write somewhere else; a directory we keep files in must be a directory, owned
by this user and not group- or world-writable.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from collections.abc import Iterable

from amorsize.errors import StorageError

logger = logging.getLogger("amorsize")

FILE_MODE = 0o600
DIR_MODE = 0o700
#: Permission bits that let someone else plant or swap files in a directory.
_SHARED_BITS = stat.S_IWGRP | stat.S_IWOTH
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def refuse_symlink(path: str, what: str, error: type[StorageError] = StorageError) -> None:
    """Raise ``error`` if ``path`` is a symlink (dangling or not)."""
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return  # a parent is a file: the directory check reports it
    if is_link:
        raise error(f"{what} {path} is a symlink; refusing to follow it (remove the link)")


def open_nofollow(
    path: str, flags: int, what: str, error: type[StorageError] = StorageError
) -> int:
    """``os.open`` with ``O_NOFOLLOW``; an existing file must be regular, a new one is 0600.

    With ``O_CREAT`` the file is opened if it exists, else created with ``O_EXCL``
    (so a file slipped in meanwhile is never reused blindly).

    Raises:
        StorageError (``error``): ``path`` is a symlink or not a regular file.
        OSError: any other failure (missing file without O_CREAT, no space, ...).
    """
    create = bool(flags & os.O_CREAT)
    flags = (flags & ~(os.O_CREAT | os.O_EXCL)) | _NOFOLLOW
    for _ in range(8):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                raise
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                continue  # created (or linked) meanwhile: look again
            except OSError as exc:
                _raise_if_symlink(exc, path, what, error)
                raise
        except OSError as exc:
            _raise_if_symlink(exc, path, what, error)
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise error(f"{what} {path} is not a regular file; refusing to use it")
        return fd
    raise error(f"{what} {path} keeps changing between checks; refusing to use it")


def _raise_if_symlink(exc: OSError, path: str, what: str, error: type[StorageError]) -> None:
    if exc.errno in (errno.ELOOP, errno.EEXIST) and os.path.islink(path):
        raise error(f"{what} {path} is a symlink; refusing to follow it (remove the link)") from None


def read_nofollow(path: str, what: str, error: type[StorageError] = StorageError) -> bytes:
    """The whole content of the regular file ``path``, refusing a symlink."""
    fd = open_nofollow(path, os.O_RDONLY, what, error)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def fsync_directory(directory: str) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_directory(directory: str) -> None:
    """Create ``directory`` and missing parents with mode 0700, whatever the umask."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(os.path.abspath(directory))
    if parent != os.path.abspath(directory):
        ensure_directory(parent)
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask


def private_directory(
    directory: str, what: str, error: type[StorageError] = StorageError, *, owner: bool = True
) -> None:
    """Create ``directory`` (0700, parents too) or check it is safe to keep files in.

    It must be a directory, writable, owned by this user (with ``owner``), and not
    group- or world-writable; an empty one this user owns is tightened to 0700.

    Raises:
        StorageError (``error``): naming the path and the reason.
    """
    try:
        ensure_directory(directory)
        info = os.stat(directory)
    except (FileExistsError, NotADirectoryError) as exc:
        raise error(f"{what} {directory} cannot be used: a path component is not a directory "
                    f"({exc.strerror})") from None
    except OSError as exc:
        raise error(f"{what} {directory} cannot be created: not writable by this user "
                    f"({exc.strerror or exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {directory} is not a directory")
    if owner and info.st_uid != os.geteuid():
        raise error(f"{what} {directory} is owned by uid {info.st_uid}, not by this user "
                    f"(uid {os.geteuid()}); refusing to keep files there")
    if info.st_mode & _SHARED_BITS:
        _tighten_or_refuse(directory, info, what, error)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise error(f"{what} {directory} is not writable by this user")


def _tighten_or_refuse(
    directory: str, info: os.stat_result, what: str, error: type[StorageError]
) -> None:
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == os.geteuid() and not os.listdir(directory):
        os.chmod(directory, DIR_MODE)
        logger.warning("%s %s was group- or world-writable (mode %o) and empty: tightened to 0700",
                       what, directory, mode)
        return
    raise error(f"{what} {directory} is group- or world-writable (mode {mode:o}) and not empty; "
                "others could plant or swap files there. Use a private directory (chmod 700)")


def write_atomically(
    path: str, lines: Iterable[bytes], *, prefix: str = ".dlq-",
    error: type[StorageError] = StorageError,
) -> None:
    """Write ``lines`` to ``path`` by temp file, fsync and ``os.replace`` (mode 0600).

    A symlink at ``path`` is refused, not replaced.
    """
    directory = os.path.dirname(os.path.abspath(path))
    ensure_directory(directory)
    refuse_symlink(path, "file", error)
    fd, temp_path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            for line in lines:
                handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, FILE_MODE)
        refuse_symlink(path, "file", error)
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def remove_stale_temp_files(directory: str, prefix: str, suffix: str = ".tmp") -> list[str]:
    """Remove this user's ``<prefix>*<suffix>`` regular files left in ``directory``.

    An interrupted atomic write (a SIGKILL between mkstemp and replace) leaves one.
    Only regular files owned by this user, matching the pattern, are removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    uid = os.geteuid()
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == uid:
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return removed


def write_probe(directory: str, what: str, error: type[StorageError] = StorageError) -> None:
    """Create, write, fsync, replace and remove a probe file in ``directory``.

    Raises:
        StorageError (``error``): any step failed (not writable, full disk, ...).
    """
    fd, probe = -1, ""
    moved = ""
    try:
        fd, probe = tempfile.mkstemp(prefix=".amorsize-probe-", suffix=".tmp", dir=directory)
        os.write(fd, b"amorsize write probe\n" * 64)
        os.fsync(fd)
        moved = probe + ".moved"
        os.replace(probe, moved)
        probe = moved
    except OSError as exc:
        raise error(f"{what} {directory} cannot be written: the write probe failed "
                    f"({exc.strerror or exc}); nothing was run") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if probe:
            try:
                os.unlink(probe)
            except OSError:
                pass


def truncate_quietly(fd: int, size: int) -> None:
    """Cut the file to ``size`` bytes if possible (undoing a partial write)."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass  # the next append's tail check cuts what is left


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer at the end of the file)."""
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (``os.write`` may write less)."""
    written = os.write(fd, data)
    if written == len(data):  # the usual case: no view to make
        return
    view = memoryview(data)[written:]
    while view:
        written = os.write(fd, view)
        view = view[written:]
