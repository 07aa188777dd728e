"""Functions the issue-12 fault tests run as ``func``: module level, so spawn workers import them.

Probes that start or become processes write their pid into a directory the test
passes in, so the test can check each one is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Tuple

import amorsize

#: Long enough that only a kill ends it within any test's timeout.
HANG_SECONDS = 60.0
#: What ``raise_base_at`` raises, by name: every kind of BaseException the issue lists.
BASE_KINDS = ("SystemExit", "GeneratorExit", "custom", "KeyboardInterrupt")


class ProbeBaseException(BaseException):
    """A user's own BaseException subclass (not an Exception)."""


def record_pid(directory: str, prefix: str = "") -> None:
    """Leave this process's pid in ``directory`` (one empty file per pid)."""
    (Path(directory) / f"{prefix}{os.getpid()}").touch()


def recorded_pids(directory: Path, prefix: str = "") -> List[int]:
    return [int(p.name[len(prefix):]) for p in directory.iterdir()
            if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()]


def double(x: int) -> int:
    return x * 2


def make_base(kind: str) -> BaseException:
    if kind == "SystemExit":
        return SystemExit(3)
    if kind == "GeneratorExit":
        return GeneratorExit("raised by func")
    if kind == "KeyboardInterrupt":
        return KeyboardInterrupt("raised by func, not a Ctrl-C")
    return ProbeBaseException("a custom BaseException")


def raise_base_at(x: int, kinds: Dict[int, str]) -> int:
    """Raise the BaseException named ``kinds[x]``; double the other items."""
    if x in kinds:
        raise make_base(kinds[x])
    return x * 2


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"item {x} is odd")
    return x * 2


def fail_at(x: int, bad: FrozenSet[int]) -> int:
    if x in bad:
        raise ValueError(f"item {x} fails")
    return x * 2


def hang_at(x: int, bad: FrozenSet[int], start_dir: str) -> int:
    """Hang on the items in ``bad``, after noting when the item started (monotonic clock)."""
    if x in bad:
        (Path(start_dir) / str(x)).write_text(repr(time.monotonic()))
        time.sleep(HANG_SECONDS)
    return x * 2


def count_dead_letters(x: int, bad: FrozenSet[int], directory: str) -> int:
    """Fail on ``bad``; otherwise return how many entries the on-disk DLQ holds right now."""
    if x in bad:
        raise ValueError(f"item {x} fails")
    return len(amorsize.DeadLetterQueue(amorsize.DLQPolicy(directory=directory)))


def pid_double(x: int) -> Tuple[int, int]:
    return os.getpid(), x * 2


def nested(x: int, inner: Dict[str, Any]) -> Tuple[int, List[int], int]:
    """Run an inner execute() from inside a worker: (my pid, inner pids, sum of inner values)."""
    out = amorsize.execute(pid_double, range(x), **inner)
    return os.getpid(), sorted({pid for pid, _ in out}), sum(value for _, value in out)


def start_grandchild(pid_dir: str) -> None:
    """Start a long sleeper in this worker's process group and record its pid."""
    child = subprocess.Popen(  # no inherited pipes: the test watches processes, not pipes
        [sys.executable, "-c", f"import time; time.sleep({HANG_SECONDS})"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    (Path(pid_dir) / f"grandchild-{child.pid}").touch()


def grandchild_then(x: int, at: int, then: str, pid_dir: str) -> int:
    """At item ``at``: start a grandchild, then hang, crash or return (leaving it running)."""
    if x == at:
        start_grandchild(pid_dir)
        if then == "hang":
            time.sleep(HANG_SECONDS)
        elif then == "crash":
            os._exit(1)
    return x * 2


def ignore_sigterm_and_hang(x: int, pid_dir: str) -> int:
    """A worker that ignores SIGTERM, starts a grandchild and never finishes on its own."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record_pid(pid_dir, "worker-")
    start_grandchild(pid_dir)
    time.sleep(HANG_SECONDS)
    return x


def fork_and_return(x: int, at: FrozenSet[int], pid_dir: str) -> int:
    """At the items in ``at`` fork; the copy returns too and carries on as the worker would."""
    if x in at and os.fork() == 0:
        record_pid(pid_dir, "copy-")
    return x * 2


def close_fds_at(x: int, at: int) -> int:
    """At item ``at`` close every file descriptor above 2 (the worker's pipes go with them)."""
    if x == at:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    return x * 2


def exit_at(x: int, bad: FrozenSet[int]) -> int:
    """Kill the worker (no exception, no traceback) at the items in ``bad``."""
    if x in bad:
        os._exit(3)
    return x + 1
