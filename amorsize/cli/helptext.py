"""The ``--help`` epilogs: each subcommand lists only the exit codes it can return.

The full table stays in :data:`amorsize.cli.common.EXIT_CODES_HELP` (the top-level
help); a subcommand's epilog is built from its rows here, then the time-format
note for the commands that take ``--since``/``--until``.
"""

from __future__ import annotations

from typing import Sequence

#: One row per exit code, as the full table words it (continuation lines indented).
EXIT_ROWS = {
    0: "success",
    1: "replay: some entries still fail (they stay in the DLQ with retry_count + 1)",
    2: "usage error: a bad option or value, an entry id that matches no entry or several,\n"
       "     pickled items without --allow-pickle",
    3: "no DLQ at DIR, or the DLQ is corrupt (file and line on stderr) or cannot be\n"
       "     read or written",
    4: "another replay or purge is running on DIR (it holds DIR/.replay.lock)",
    130: "interrupted by Ctrl-C (143: SIGTERM)",
}

#: The codes each subcommand can return.
COMMAND_CODES = {
    "summary": (0, 2, 3),
    "list": (0, 2, 3),
    "show": (0, 2, 3),
    "export": (0, 2, 3),
    "purge": (0, 2, 3, 4),
    "replay": (0, 1, 2, 3, 4, 130),
    "tail": (0, 2, 3),
    "migrate": (0, 2, 3, 4),
}

TIMES_HELP = """\
Times are shown in UTC. --since/--until take ISO 8601 (2024-05-01T03:00:00Z; no
offset means UTC) or an age (90s, 30m, 2h, 1d, 1w).
"""


def exit_codes_help(codes: Sequence[int]) -> str:
    """The exit-code table with only ``codes``."""
    rows = "\n".join(f"  {code:<4} {EXIT_ROWS[code]}" for code in codes)
    return f"exit codes:\n{rows}\n"


def epilog(command: str, *, times: bool = True) -> str:
    """The epilog of ``amorsize dlq COMMAND --help``."""
    text = exit_codes_help(COMMAND_CODES[command])
    return text + ("\n" + TIMES_HELP if times else "")
