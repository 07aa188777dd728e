"""A user's script whose function fails: its DLQ tracebacks must point into this file.

Usage: main_traceback.py DLQ_DIR OPTIONS_JSON
Prints its own pid, so the test can tell where ``work`` ran.
"""

from __future__ import annotations

import json
import os
import sys

from amorsize import DeadLetterQueue, DLQPolicy, execute


def work(x: int) -> int:
    if x % 2:
        raise ValueError(f"item {x} is odd")  # the line the traceback must show
    return x * 2


if __name__ == "__main__":
    print(os.getpid(), flush=True)
    dlq = DeadLetterQueue(DLQPolicy(directory=sys.argv[1]))
    execute(work, range(6), dlq=dlq, **json.loads(sys.argv[2]))
