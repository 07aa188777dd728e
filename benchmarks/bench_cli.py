"""The CLI on a 100,000-entry queue: time of `summary` and `list --newest --limit 20`, and memory.

    python benchmarks/bench_cli.py             # 100,000 entries
    python benchmarks/bench_cli.py --entries 20000

A journal of N entries is written once (realistic entries: five failure kinds,
messages that differ by an id, a traceback, a worker's metadata). Each command
then runs as a real process (``python -m amorsize dlq ...``), REPEATS times; the
figure is the median wall time (the best is printed too: other processes share
the CPU), and the peak RSS of the process comes from ``os.wait4``. Targets
(PASS/FAIL, printed, not asserted): each TARGETED command under TARGET_SECONDS,
every run under TARGET_RSS_MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from amorsize import DeadLetterQueue, DLQEntry, DLQPolicy  # noqa: E402
from amorsize.dlq.entry import new_entry_id  # noqa: E402

REPEATS = 3
TARGET_SECONDS = 1.5
TARGET_RSS_MB = 300.0
COMMANDS = (
    ("summary", ["summary"]),
    ("list --newest --limit 20", ["list", "--newest", "--limit", "20"]),
    *((f"summary --by {key}", ["summary", "--by", key])
      for key in ("signature", "error-type", "reason", "function", "host")),
    ("summary --error-type valueerror --json", ["summary", "--error-type", "valueerror", "--json"]),
    ("summary --function parse --host worker-1", ["summary", "--function", "parse", "--host",
                                                   "worker-1"]),
    ("list --json --error-type valueerror --limit 20",
     ["list", "--json", "--error-type", "valueerror", "--limit", "20"]),
)
#: Rows judged against the targets: every summary (it reads rows, not entries) and the
#: plain newest page; the filtered list decodes every entry and is shown for comparison.
TARGETED = tuple(label for label, _ in COMMANDS if label.startswith(("summary", "list --newest")))
TRACEBACK = ('Traceback (most recent call last):\n  File "etl.py", line 12, in parse\n'
             '    return int(row["amount"])\nValueError: bad\n')


def fill(directory: str, n: int) -> None:
    """Write ``n`` entries in batches (extend: one journal write per batch)."""
    kinds = [
        ("ValueError", "record {i} is malformed", "exception"),
        ("KeyError", "'field_{k}'", "exception"),
        ("JSONDecodeError", "Expecting value: line 1 column {k} (char {i})", "exception"),
        ("ItemTimeoutError", "item ran past its 30.0 s timeout", "timeout"),
        ("WorkerCrashedError", "worker pid {i} died (exit code -9)", "worker_crash"),
    ]
    queue = DeadLetterQueue(DLQPolicy(directory=directory, max_entries=0))
    start = time.time() - n * 0.01
    batch: List[DLQEntry] = []
    for i in range(n):
        error_type, message, reason = kinds[i % len(kinds)]
        stamp = start + i * 0.01
        batch.append(DLQEntry(
            {"id": i, "path": f"/data/part-{i % 97}.csv"}, error_type,
            message.format(i=i, k=i % 7), stamp, TRACEBACK, i % 3,
            {"attempts": 1 + i % 3, "pid": 1000 + i % 8, "host": "worker-1", "function": "etl.parse"},
            new_entry_id(int(stamp * 1e9)), reason, error_type,
        ))
        if len(batch) == 5000:
            queue.extend(batch)
            batch = []
    queue.extend(batch)
    queue.close()


def run(args: List[str]) -> Tuple[float, float, float]:
    """``(wall s, CPU s, peak RSS MB)`` of one ``python -m amorsize dlq ...`` process.

    CPU seconds (user + system, of the command and the child a big summary forks to
    parse half the journal) bound the wall time on an idle machine from above; the
    wall time also counts waiting for a core when other processes share them.
    """
    env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="120")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "amorsize", "dlq", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed with exit code {proc.returncode}: "
                         f"{proc.stderr.read().decode() if proc.stderr else ''}")
    cpu = usage.ru_utime + usage.ru_stime
    return elapsed, cpu, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    opts = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="amorsize-bench-cli-")
    ok = True
    try:
        directory = os.path.join(workdir, "q")
        started = time.perf_counter()
        fill(directory, opts.entries)
        size = os.path.getsize(os.path.join(directory, "dlq.jsonl")) / 1e6
        print(f"{opts.entries:,} entries written in {time.perf_counter() - started:.1f} s "
              f"({size:.0f} MB journal); {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; median of {REPEATS} runs")
        if sys.flags.dont_write_bytecode:  # the CLI then compiles its modules at every start
            print("  PYTHONDONTWRITEBYTECODE is set: each command compiles its modules "
                  "(~0.1 s) instead of loading them from __pycache__ as an installed CLI does")
        for label, command in COMMANDS:
            runs = [run([*command, directory]) for _ in range(REPEATS)]
            median = statistics.median(t for t, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            rss = max(m for _, _, m in runs)
            targeted = label in TARGETED
            verdict = ""
            if targeted:
                passed = median < TARGET_SECONDS and rss < TARGET_RSS_MB
                ok &= passed
                verdict = "PASS" if passed else "FAIL"
            print(f"  {label:<48} {median:6.2f} s (best {min(t for t, _, _ in runs):.2f}, "
                  f"CPU {cpu:.2f} s)  peak RSS {rss:4.0f} MB  {verdict}")
        print(f"targets: < {TARGET_SECONDS} s and < {TARGET_RSS_MB:.0f} MB each: "
              f"{'PASS' if ok else 'FAIL'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
