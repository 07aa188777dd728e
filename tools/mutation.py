"""Mutation testing with mutmut, one module at a time, each against its own tests.

    python tools/mutation.py                      # every module in TARGETS
    python tools/mutation.py amorsize/retry.py    # one module
    python tools/mutation.py amorsize/executor.py --sample   # only its SAMPLE functions
    python tools/mutation.py amorsize/retry.py --only '*compute_delay*'

The tree (git-tracked files) is copied to a scratch directory, so the worktree is
never mutated; mutmut's own config is written there. Survivors are listed at the
end with ``mutmut show`` diffs in ``<scratch>/<module>.survivors.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]

#: Module -> the tests that exercise it. THE one list to edit when modules move
#: (after the engine split: amorsize/run/chunker.py and amorsize/run/dispatch.py
#: replace amorsize/executor.py).
TARGETS: Dict[str, List[str]] = {
    "amorsize/dlq/journal.py": ["tests/test_dlq_journal.py", "tests/test_mutants.py",
                                "tests/faults/test_dlq_writers.py"],
    "amorsize/executor.py": ["tests/test_executor.py", "tests/test_mutants.py"],
    "amorsize/retry.py": ["tests/test_retry.py", "tests/test_retry_mutants.py", "tests/test_mutants.py"],
    "amorsize/breaker.py": ["tests/test_breaker.py", "tests/test_breaker_mutants.py"],
}

#: With --sample, only mutants of these functions run (mutmut name globs): the
#: journal's recovery and compaction, and the executor's chunking and alignment.
SAMPLE: Dict[str, List[str]] = {
    "amorsize/dlq/journal.py": ["*_clean_end*", "*read_records*", "*_record_id*", "*compact*"],
    "amorsize/executor.py": ["*_plan_from_dry_run*", "*_subtask*", "*_next_task*"],
}


def _copy_tree(scratch: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if name.startswith("plugins/"):
            continue
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def _write_config(scratch: Path, module: str) -> None:
    tests = "\n".join(f"    {t}" for t in TARGETS[module])
    (scratch / "setup.cfg").write_text(
        f"[mutmut]\npaths_to_mutate={module}\ntests_dir=\n{tests}\n"
        "also_copy=\n    amorsize\n    tests\n"
    )


def run_module(module: str, scratch_root: Path, sample: bool, only: List[str]) -> Dict[str, int]:
    scratch = scratch_root / module.replace("/", "_")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    _copy_tree(scratch)
    _write_config(scratch, module)
    mutmut = [sys.executable, "-m", "mutmut"]
    globs = only or (SAMPLE.get(module, []) if sample else [])
    began = time.monotonic()
    with open(scratch / "mutmut.log", "w") as log:  # the progress bar is one endless line
        subprocess.run([*mutmut, "run", *globs], cwd=scratch, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - began
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=scratch, capture_output=True)
    stats_file = scratch / "mutants" / "mutmut-cicd-stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    listing = subprocess.run([*mutmut, "results"], cwd=scratch, capture_output=True, text=True).stdout
    survivors = [line.split(":")[0].strip() for line in listing.splitlines()
                 if line.strip().endswith("survived")]
    with open(scratch_root / f"{module.replace('/', '_')}.survivors.txt", "w") as out:
        for name in survivors:
            diff = subprocess.run([*mutmut, "show", name], cwd=scratch, capture_output=True,
                                  text=True).stdout
            changed = [line for line in diff.splitlines()
                       if line[:1] in "+-" and line[:3] not in ("+++", "---")]
            out.write(f"== {name}\n" + "\n".join(changed) + "\n")
    print(f"{module}: {stats} in {elapsed:.0f}s; survivors: {len(survivors)} "
          f"(diffs in {scratch_root / (module.replace('/', '_') + '.survivors.txt')})")
    return stats


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: every TARGETS key)")
    parser.add_argument("--sample", action="store_true", help="only the SAMPLE functions of a module")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="only mutants whose name matches GLOB (e.g. '*_clean_end*'); repeatable")
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "amorsize-mutation"))
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        parser.error(f"not in TARGETS: {unknown}; known: {sorted(TARGETS)}")
    scratch_root = Path(args.scratch)
    scratch_root.mkdir(parents=True, exist_ok=True)
    for module in args.modules or list(TARGETS):
        run_module(module, scratch_root, args.sample, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
