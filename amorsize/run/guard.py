"""The spawn guard: a script without ``if __name__ == "__main__":`` under spawn or forkserver.

Those start methods re-run the main module in each new process. A script that
calls ``execute()`` at its top level then calls it again inside every worker
while the worker is still starting. Such a child leaves at once with
:data:`MAIN_GUARD_EXIT` (one line on stderr), and the parent raises a single
:class:`~amorsize.errors.MainGuardError` showing the fix: no item is blamed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
from typing import Iterator

from amorsize.errors import MainGuardError

#: Exit code of a worker that found itself re-running the main module unguarded.
MAIN_GUARD_EXIT = 87

GUARD_MESSAGE = (
    "a worker process could not start: the {method} start method re-runs your main "
    "module in every worker, and it calls amorsize at its top level. Put the call under "
    'the main guard:\n\n    if __name__ == "__main__":\n        results = execute(func, items)\n\n'
    "No item was run or dead-lettered."
)


def reimporting_main() -> bool:
    """True while this process is a new worker still importing the parent's main module."""
    return bool(getattr(multiprocessing.process.current_process(), "_inheriting", False))


#: Environment variable naming a file a child touches when it leaves for the guard, so a
#: parent that only sees "failed to start" (a Dask nanny) can tell why.
MARKER_VAR = "AMORSIZE_MAIN_GUARD_MARKER"


def leave_if_reimporting_main() -> None:
    """In a child re-running an unguarded main module: leave quietly, with MAIN_GUARD_EXIT."""
    if reimporting_main():
        marker = os.environ.get(MARKER_VAR)
        if marker:
            try:
                open(marker, "w").close()
            except OSError:
                pass
        sys.stderr.write('amorsize: missing if __name__ == "__main__": guard (see the parent\'s error)\n')
        sys.stderr.flush()
        os._exit(MAIN_GUARD_EXIT)


@contextlib.contextmanager
def watching_for_unguarded_main(method: str) -> Iterator[None]:
    """Around starting processes that spawn (a Dask cluster): a child that left for the
    guard turns the start-up error into one :class:`MainGuardError`."""
    with tempfile.TemporaryDirectory(prefix="amorsize-guard-") as directory:
        marker = os.path.join(directory, "left")
        previous = os.environ.get(MARKER_VAR)
        os.environ[MARKER_VAR] = marker
        try:
            yield
        except Exception:
            if os.path.exists(marker):
                raise main_guard_error(method) from None  # the chain is dask internals, not the cause
            raise
        finally:
            if previous is None:
                os.environ.pop(MARKER_VAR, None)
            else:
                os.environ[MARKER_VAR] = previous


def main_guard_error(method: str) -> MainGuardError:
    return MainGuardError(GUARD_MESSAGE.format(method=method))
