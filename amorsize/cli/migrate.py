"""``amorsize dlq migrate DIR [--dry-run]``: move a seed-era dlq.json / dlq.pkl into the journal.

Read commands never migrate (they change nothing); they warn when a seed-era file
is there. Opening the queue from the library migrates too (see
:mod:`amorsize.dlq.migrate`); this command does it explicitly, or only shows it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from amorsize.cli.common import EXIT_DLQ_UNREADABLE, EXIT_OK, CLIError, exclusive_lock, require_directory
from amorsize.dlq.migrate import SEED_FILES, migrate_seed_files
from amorsize.dlq.policy import DLQFormat


def warn_seed_files(directory: str) -> None:
    """One stderr line per seed-era file in ``directory`` that is not migrated yet."""
    for name in SEED_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            print(f"amorsize: warning: {directory} holds a seed-era {name} that is not in the "
                  f"journal; `amorsize dlq migrate {directory}` moves it in", file=sys.stderr)


def add_migrate_parser(sub: Any, subcommand: Any) -> None:
    p = subcommand(sub, "migrate", "move a seed-era dlq.json or dlq.pkl into the journal",
                   times=False)
    p.add_argument("--dry-run", action="store_true", help="only say what would be migrated")
    p.add_argument("--format", choices=[f.value for f in DLQFormat], default="json",
                   help="the journal format to write items in (default json)")
    p.set_defaults(handler=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    require_directory(args.dir)
    with exclusive_lock(args.dir, "migrate"):
        try:
            report = migrate_seed_files(
                args.dir, allow_pickle=args.allow_pickle, dry_run=args.dry_run,
                pickle_everything=args.format == DLQFormat.PICKLE.value,
            )
        except OSError as exc:
            raise CLIError(f"migration failed: {exc.strerror or exc}; the old files are left "
                           "as they are", EXIT_DLQ_UNREADABLE) from None
    if not report.migrated and not report.skipped:
        print(f"nothing to migrate: no dlq.json or dlq.pkl in {args.dir}")
    verb = "would migrate" if args.dry_run else "migrated"
    for name, count in report.migrated.items():
        kept = "" if args.dry_run else f"; the old file is kept as {report.renamed.get(name)}"
        print(f"{verb} {count} entries from {name} into dlq.jsonl{kept}")
    for name, why in report.skipped.items():
        print(f"not migrated: {name}: {why}")
    if args.dry_run:
        print("dry run: nothing was changed")
    return EXIT_OK
