"""The spawn guard: a script without ``if __name__ == "__main__":`` under spawn or forkserver.

Those start methods re-run the main module in each new process. A script that
calls ``execute()`` at its top level then calls it again inside every worker
while the worker is still starting. Such a child leaves at once with
:data:`MAIN_GUARD_EXIT` (one line on stderr), and the parent raises a single
:class:`~amorsize.errors.MainGuardError` showing the fix: no item is blamed.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

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


def leave_if_reimporting_main() -> None:
    """In a child re-running an unguarded main module: leave quietly, with MAIN_GUARD_EXIT."""
    if reimporting_main():
        sys.stderr.write('amorsize: missing if __name__ == "__main__": guard (see the parent\'s error)\n')
        sys.stderr.flush()
        os._exit(MAIN_GUARD_EXIT)


def main_guard_error(method: str) -> MainGuardError:
    return MainGuardError(GUARD_MESSAGE.format(method=method))
