"""A newcomer's script without the ``if __name__ == "__main__":`` guard.

Usage: no_guard.py DLQ_DIR OPTIONS_JSON
Only the first process prints what execute() did, as JSON on stdout; that
check guards the report, not the run.
"""

from __future__ import annotations

import json
import sys

from amorsize import AmorsizeError, DeadLetterQueue, DLQPolicy, execute


def double(x: int) -> int:
    return x * 2


def report(record: dict) -> None:
    if __name__ == "__main__":  # not in a child re-running this file as __mp_main__
        print(json.dumps(record), flush=True)


dlq = DeadLetterQueue(DLQPolicy(directory=sys.argv[1]))
try:
    results = execute(double, range(40), dlq=dlq, **json.loads(sys.argv[2]))
except AmorsizeError as error:
    report({"error": type(error).__name__, "message": str(error)})
    raise
except BaseException as error:
    report({"other_error": type(error).__name__, "message": str(error)})
    raise
report({"results": results})
