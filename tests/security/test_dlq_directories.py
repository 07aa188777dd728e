"""DLQ and checkpoint directories: checked at construction, private whatever the umask.

Issue 13, "Deliver" 1 and 3: the directory is created 0700 (parents too) or exists
as a directory owned by this user and not group- or world-writable; otherwise a
``DLQError`` names the path and the reason. An empty directory this user owns may be
tightened to 0700 instead of refused.
"""

from __future__ import annotations

import os
import pwd
import stat
from typing import Any, Iterator

import pytest

from amorsize import AmorsizeError, Checkpoint, DeadLetterQueue, DLQError, DLQPolicy, execute


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Any) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_directory_path_that_is_a_file_is_refused_at_construction(tmp_path):
    """Why: it was accepted, then every append logged a misleading FileExistsError."""
    path = tmp_path / "dlq"
    path.write_text("I am a file")
    with pytest.raises(DLQError) as info:
        DeadLetterQueue(DLQPolicy(directory=path))
    assert str(path) in str(info.value)
    assert "not a directory" in str(info.value)
    assert path.read_text() == "I am a file"


def test_a_path_under_a_file_is_refused_at_construction(tmp_path):
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "dlq"
    with pytest.raises(DLQError) as info:
        DeadLetterQueue(DLQPolicy(directory=path))
    assert str(tmp_path / "plain") in str(info.value)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777], ids=["world", "group", "sticky-world"])
def test_a_shared_writable_directory_with_content_is_refused(tmp_path, mode):
    """Why: a pre-existing DLQ directory with mode 0777 was used as is."""
    directory = tmp_path / "dlq"
    directory.mkdir()
    (directory / "someone-elses-file").write_text("x")
    os.chmod(directory, mode)
    with pytest.raises(DLQError) as info:
        DeadLetterQueue(DLQPolicy(directory=directory))
    assert str(directory) in str(info.value)
    assert "writable" in str(info.value)
    assert mode_of(directory) == mode, "a directory with content was changed instead of refused"


@pytest.mark.parametrize("mode", [0o777, 0o770], ids=["world", "group"])
def test_an_empty_shared_writable_directory_is_refused_or_tightened(tmp_path, mode):
    directory = tmp_path / "dlq"
    directory.mkdir()
    os.chmod(directory, mode)
    try:
        queue = DeadLetterQueue(DLQPolicy(directory=directory))
    except DLQError as exc:
        assert str(directory) in str(exc) and "writable" in str(exc)
        return
    queue.add("x", ValueError("x"))
    queue.close()
    assert mode_of(directory) == 0o700, f"used as is with mode {oct(mode_of(directory))}"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_owned_by_someone_else_is_refused(tmp_path):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    directory = tmp_path / "dlq"
    directory.mkdir(mode=0o700)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(DLQError) as info:
        DeadLetterQueue(DLQPolicy(directory=directory))
    assert str(directory) in str(info.value)
    assert "owned" in str(info.value) or "owner" in str(info.value)


def test_umask_000_creates_the_directory_and_its_parents_0700_and_files_0600(tmp_path, umask_000):
    """Why: parent directories made for the DLQ got 0777 under umask 000."""
    top = tmp_path / "a"
    directory = top / "b" / "dlq"
    queue = DeadLetterQueue(DLQPolicy(directory=directory))
    queue.add("x", ValueError("x"))
    queue.remove([queue.add("y", ValueError("y")).entry_id])  # a compaction writes a new file
    queue.close()
    for path in (top, top / "b", directory):
        assert mode_of(path) == 0o700, f"{path} has mode {oct(mode_of(path))}"
    for name in os.listdir(directory):
        assert mode_of(directory / name) == 0o600, f"{name} has mode {oct(mode_of(directory / name))}"


def test_construction_creates_the_directory(tmp_path, umask_000):
    """Checked at construction, not at the first append."""
    directory = tmp_path / "p" / "dlq"
    DeadLetterQueue(DLQPolicy(directory=directory))
    assert directory.is_dir() and mode_of(directory) == 0o700
    assert mode_of(tmp_path / "p") == 0o700


def double(x: int) -> int:
    return 2 * x


def test_checkpoint_parents_are_created_0700_and_the_file_0600_under_umask_000(tmp_path, umask_000):
    path = tmp_path / "c" / "d" / "run.ckpt"
    execute(double, range(5), n_jobs=1, checkpoint=Checkpoint(path, every_items=1, keep=True))
    assert mode_of(path) == 0o600
    for parent in (tmp_path / "c", tmp_path / "c" / "d"):
        assert mode_of(parent) == 0o700, f"{parent} has mode {oct(mode_of(parent))}"


def test_a_world_writable_checkpoint_directory_is_refused_before_any_call(tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir()
    (directory / "other").write_text("x")
    os.chmod(directory, 0o777)
    calls = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    with pytest.raises(AmorsizeError) as info:
        execute(record, range(5), n_jobs=1, checkpoint=Checkpoint(directory / "run.ckpt", every_items=1))
    assert str(directory) in str(info.value) and "writable" in str(info.value)
    assert calls == []
