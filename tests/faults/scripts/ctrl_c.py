"""A long run whose workers ignore SIGTERM and start a grandchild each; the test sends Ctrl-C.

Usage: ctrl_c.py PID_DIR START_METHOD
"""

from __future__ import annotations

import functools
import sys

from fault_probes import ignore_sigterm_and_hang

from amorsize import DeadLetterQueue, DLQPolicy, execute

if __name__ == "__main__":
    func = functools.partial(ignore_sigterm_and_hang, pid_dir=sys.argv[1])
    execute(func, range(100), n_jobs=2, chunksize=1, start_method=sys.argv[2],
            dlq=DeadLetterQueue(DLQPolicy(auto_persist=False)))
