"""Instructions per item of a shared DLQ hook, counted by callgrind (not timed).

    python benchmarks/bench_instructions.py            # 1,000 items per path
    python benchmarks/bench_instructions.py --items 3000

On a 2-core VM whose speed moves by ~1.5x over an hour, wall and CPU figures cannot
tell a 5% change from noise. Instruction counts can: this runs each path of
``bench_shared.py``'s ``etl`` step in one process under ``valgrind --tool=callgrind``
(with ``PYTHONHASHSEED=0``), twice (200 items, then 200 + ``--items``), and prints the
difference per item, so start-up cancels out. The hook's manager runs in this
process, outside valgrind. Instructions in the kernel (the ``write`` and ``poll``
system calls) are not counted. No targets: this explains the timed benchmarks.

Paths: ``bare`` (``try: etl(i) except Exception: pass``), ``floor`` (bench_shared's
hand-written shared-file record), ``hook`` (``dlq.capture(etl)`` with every item
failing), ``hook+pickle`` (the same, each 100 results pickled and unpickled as a pool
does), ``ok`` and ``hook ok`` (the same step, no item failing).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout this file lives in

import bench_shared as work  # noqa: E402

WARM_ITEMS = 200
PATHS = ["bare", "floor", "hook", "hook+pickle", "ok", "hook ok"]


def _bare(i: int) -> Any:
    try:
        return work.etl_all(i)
    except Exception:
        return None


def child(path: str, items: int, hooks_file: str, floor_directory: str) -> None:
    """Run ``items`` items through ``path`` (inside valgrind)."""
    from multiprocessing.reduction import ForkingPickler

    with open(hooks_file, "rb") as handle:
        failing, succeeding = pickle.load(handle)
    work._floor_directory = floor_directory
    funcs: Dict[str, Callable[[int], Any]] = {
        "bare": _bare, "floor": work.Floor(work.etl_all, checks=False), "hook": failing,
        "hook+pickle": failing, "ok": work.etl_ok, "hook ok": succeeding,
    }
    func, pickled = funcs[path], path == "hook+pickle"
    func(0)  # connections, caches
    for start in range(1, items + 1, 100):
        values = [func(i) for i in range(start, start + 100)]
        if pickled:
            values = pickle.loads(ForkingPickler.dumps(values))


def count(path: str, items: int, hooks_file: str, floor_directory: str) -> int:
    """Instructions callgrind collected for a child run of ``items`` items."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               os.path.abspath(__file__), "--child", path, "--items", str(items),
               "--hooks", hooks_file, "--floor", floor_directory]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count for {path!r}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--hooks", help=argparse.SUPPRESS)
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.items, args.hooks, args.floor)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("bench_instructions.py needs valgrind on PATH (apt install valgrind)")

    from amorsize import DLQPolicy, SharedDeadLetterQueue

    directory = tempfile.mkdtemp(prefix="amorsize-instructions-")
    try:
        with SharedDeadLetterQueue(DLQPolicy(directory=os.path.join(directory, "dlq"),
                                             max_entries=10**7)) as dlq:
            hooks_file = os.path.join(directory, "hooks.pkl")
            with open(hooks_file, "wb") as handle:
                pickle.dump((dlq.capture(work.etl_all), dlq.capture(work.etl_ok)), handle)
            print(f"callgrind, PYTHONHASHSEED=0, Python {sys.version.split()[0]}; instructions per "
                  f"item over {args.items:,} items of bench_shared's etl step")
            per_item: Dict[str, float] = {}
            for path in PATHS:
                low = count(path, WARM_ITEMS, hooks_file, directory)
                high = count(path, WARM_ITEMS + args.items, hooks_file, directory)
                per_item[path] = (high - low) / args.items
                print(f"  {path:<12} {per_item[path]:>10,.0f}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    bare, ok = per_item["bare"], per_item["ok"]
    hook, pickled, floor = (per_item[k] - bare for k in ("hook", "hook+pickle", "floor"))
    print(f"a failure over a bare try/except: hook {hook:,.0f}, with the pool's pickling "
          f"{pickled:,.0f}, hand-written floor {floor:,.0f}")
    print(f"a success over a bare call: hook {per_item['hook ok'] - ok:,.0f} "
          f"({(per_item['hook ok'] - ok) / ok:.1%} of the step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
