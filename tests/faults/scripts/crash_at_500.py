"""A user's script: 1000 cheap items, two that raise and one that kills its process.

Usage: crash_at_500.py DLQ_DIR CRASH OPTIONS_JSON
CRASH is "segfault" (ctypes.string_at(0)) or "exit" (os._exit(1)). Prints the
positions of the failures and of any wrong value as JSON, if the script lives.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import sys

from amorsize import DeadLetterQueue, DLQPolicy, execute, is_failure

RAISES = (307, 407)
CRASH_AT = 500
N_ITEMS = 1000


def work(x: int) -> int:
    if x in RAISES:
        raise ValueError(f"item {x} is bad")
    if x == CRASH_AT:
        if sys.argv[2] == "segfault":
            faulthandler.disable()
            ctypes.string_at(0)
        os._exit(1)
    return x * 2


if __name__ == "__main__":
    dlq = DeadLetterQueue(DLQPolicy(directory=sys.argv[1]))
    results = execute(work, range(N_ITEMS), dlq=dlq, **json.loads(sys.argv[3]))
    print(json.dumps({
        "n": len(results),
        "failures": [i for i, v in enumerate(results) if is_failure(v)],
        "wrong": [i for i, v in enumerate(results) if not is_failure(v) and v != i * 2],
    }))
