"""Resume a long run after the process was killed, without redoing finished work.

The first run is killed (SIGKILL) part-way; the second run, given the same
checkpoint, restores the finished results, runs only the rest, and returns the
same list an uninterrupted run would have.

Run: python examples/checkpoint_resume.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from amorsize import Checkpoint, DeadLetterQueue, DLQPolicy, execute


def enrich(n: int) -> dict:
    """An expensive step: pretend each record needs 5 ms of work."""
    time.sleep(0.005)
    if n % 97 == 0:
        raise ValueError(f"record {n} has no customer id")
    return {"id": n, "score": n * n % 101}


def run(workdir: str) -> list:
    dlq = DeadLetterQueue(DLQPolicy(directory=os.path.join(workdir, "dlq")))
    checkpoint = Checkpoint(os.path.join(workdir, "enrich.ckpt"), every_seconds=0.2)
    return execute(enrich, range(1500), n_jobs=2, chunksize=25, dlq=dlq, checkpoint=checkpoint)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run(sys.argv[2])
        return
    with tempfile.TemporaryDirectory() as workdir:
        child = subprocess.Popen([sys.executable, __file__, "--child", workdir])
        time.sleep(2.0)
        child.send_signal(signal.SIGKILL)  # the machine "crashed"
        child.wait()
        print("first run killed; checkpoint exists:", os.path.exists(os.path.join(workdir, "enrich.ckpt")))
        started = time.monotonic()
        results = run(workdir)
        print(f"resumed run finished in {time.monotonic() - started:.1f}s with {len(results)} results")
        expected = [{"id": n, "score": n * n % 101} for n in range(1500)]
        assert all(results[n] == expected[n] for n in range(1500) if n % 97)
        assert not any(results[n] for n in range(0, 1500, 97))  # Failure stand-ins
        dlq = DeadLetterQueue(DLQPolicy(directory=os.path.join(workdir, "dlq")))
        print("dead letters:", len(dlq), "(one per bad record, none duplicated by the resume)")
        assert sorted(e.item for e in dlq.get_entries()) == list(range(0, 1500, 97))


if __name__ == "__main__":
    main()
