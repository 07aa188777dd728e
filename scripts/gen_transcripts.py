"""Write the CLI transcripts of docs/cli.md from real runs: ``python scripts/gen_transcripts.py``.

Every ```` ```console ```` block of docs/cli.md marked ``<!-- transcript: NAME -->``
is replaced by what the commands listed for NAME below print, run one after the
other in one session directory, where the page's ``# etl.py`` and
``# etl_fixed.py`` blocks have been written first. ``--check`` writes nothing and
exits 1 if a transcript on the page differs from a fresh run (ids, times, pids and
temporary paths aside); ``tests/test_docs.py`` does the same check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docblocks

from amorsize.cli.render import id_width

PAGE = docblocks.ROOT / "docs" / "cli.md"
SHOWN_DIR = "/tmp/amorsize-demo"  # the session directory, as the page shows it
COLUMNS = "100"
COMMAND_TIMEOUT_SECONDS = 60

# A command is a string, or a callable building it from the session directory.
Command = str | Callable[[Path], str]


def _key_error_prefix(session: Path) -> str:
    """The KeyError entry's id as ``dlq list`` shows it (``show`` takes a prefix).

    The shortest prefix that tells every entry apart, as the CLI computes it: 12
    characters were ambiguous when two entries were recorded in the same ~16 us.
    """
    out = _run("amorsize dlq list failed/ --json", session)[0]
    entries = [json.loads(line) for line in out.splitlines()]
    ids = [entry["entry_id"] for entry in entries]
    key_error = next(entry["entry_id"] for entry in entries if entry["error_type"] == "KeyError")
    return str(key_error[:id_width(ids)])


TRANSCRIPTS: dict[str, list[Command]] = {
    "first-run": ["python etl.py", "amorsize dlq summary failed/", "amorsize dlq list failed/"],
    "narrow": [
        "amorsize dlq list failed/ --error-type ValueError --grep EUR --json",
        lambda session: f"amorsize dlq show failed/ {_key_error_prefix(session)}",
    ],
    "operator": [
        "amorsize dlq summary failed/ --by signature",
        "amorsize dlq list failed/ --newest --limit 2 --fields id,reason,signature",
        "amorsize dlq list failed/ --error-type valueerror --error-type keyerror --json | wc -l",
        "amorsize dlq list failed/ --error-type ValuError",
        "amorsize dlq export failed/ --to - --error-type KeyError | wc -l",
    ],
    "export": [
        "amorsize dlq export failed/ --to failed.csv --error-type ValueError",
        "ls -l failed.csv | cut -c1-10",
    ],
    "replay": [
        "amorsize dlq replay failed/ --func etl_fixed:parse_record --error-type ValueError --dry-run",
        "amorsize dlq summary failed/ | grep entries",
        "amorsize dlq replay failed/ --func etl_fixed:parse_record",
        "amorsize dlq replay failed/ --func etl_fixed:parse_record --allow-pickle",
        "amorsize dlq list failed/ --allow-pickle",
    ],
    "purge": [
        "amorsize dlq purge failed/ --error-type TypeError",
        "amorsize dlq purge failed/ --error-type TypeError -y",
    ],
    "errors": [
        "amorsize dlq replay failed/ --func etl_fixed:parse_record",
        "amorsize dlq summary broken-copy/",
        "amorsize dlq summary broken-copy/ --no-strict",
        "amorsize dlq summary nope/",
        "amorsize dlq replay failed/ --func etl_fixed:parse --dry-run",
        "amorsize dlq list failed/ --since yesterday",
    ],
}

_SLOW_MODULE = "import time\n\n\ndef parse_record(rec):\n    time.sleep(60)\n"


def _env() -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)  # this interpreter's `python` and `amorsize`
    path = bin_dir + os.pathsep + os.environ["PATH"]
    env = dict(os.environ, COLUMNS=COLUMNS, PYTHONUNBUFFERED="1", PATH=path)
    env.pop("PYTHONPATH", None)
    return env


def _run(command: str, session: Path) -> tuple[str, int]:
    done = subprocess.run(["bash", "-c", command], cwd=session, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT_SECONDS)
    return done.stdout, done.returncode


def _hold_replay_lock(session: Path) -> subprocess.Popen[bytes]:
    """Start a replay of a slow function on failed/ and wait until it holds the lock."""
    (session / "slow.py").write_text(_SLOW_MODULE)
    lock = session / "failed" / ".replay.lock"
    # Earlier replays left their pid in the file: clear it, or we would not wait at all.
    lock.unlink(missing_ok=True)
    proc = subprocess.Popen(["amorsize", "dlq", "replay", "failed/", "--func", "slow:parse_record"],
                            cwd=session, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    while not (lock.exists() and lock.read_text().strip()):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the background replay never took the lock")
        time.sleep(0.05)
    return proc


def _break_a_copy(session: Path) -> None:
    """broken-copy/: a copy of failed/ whose first record was cut short."""
    shutil.copytree(session / "failed", session / "broken-copy", ignore=shutil.ignore_patterns(".*"))
    journal = session / "broken-copy" / "dlq.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text(lines[0][: len(lines[0]) // 2] + "\n" + "".join(lines[1:]))


def _transcript(name: str, session: Path) -> str:
    parts = []
    background = None
    if name == "errors":
        _break_a_copy(session)
        background = _hold_replay_lock(session)
    try:
        for i, command in enumerate(TRANSCRIPTS[name]):
            text = command(session) if callable(command) else command
            out, code = _run(text, session)
            parts.append(f"$ {text}\n{out}[exit {code}]\n")
            if background is not None and i == 0:
                background.send_signal(signal.SIGKILL)  # a kill -9 leaves the DLQ unchanged
                background.wait(COMMAND_TIMEOUT_SECONDS)
                background = None
    finally:
        if background is not None:
            background.kill()
            background.wait(COMMAND_TIMEOUT_SECONDS)
    return "\n".join(parts).replace(str(session), SHOWN_DIR)


def generate() -> dict[str, str]:
    """Run every transcript in a fresh session directory; name -> console text."""
    files = [b for b in docblocks.blocks(PAGE) if b.lang == "python" and b.file_name]
    with tempfile.TemporaryDirectory(prefix="amorsize-demo-") as tmp:
        session = Path(tmp).resolve()
        for block in files:
            (session / str(block.file_name)).write_text(block.text)
        return {name: _transcript(name, session) for name in TRANSCRIPTS}


def write(fresh: dict[str, str]) -> None:
    """Replace each marked console block of the page with its fresh transcript."""
    lines = PAGE.read_text(encoding="utf-8").split("\n")
    for block in sorted(docblocks.blocks(PAGE), key=lambda b: b.line, reverse=True):
        if block.transcript:
            lines[block.line:block.end - 1] = fresh[block.transcript].rstrip("\n").split("\n")
    PAGE.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare with the page, write nothing")
    args = parser.parse_args()
    fresh = generate()
    if not args.check:
        write(fresh)
        return 0
    on_page = {b.transcript: b.text for b in docblocks.blocks(PAGE) if b.transcript}
    stale = [n for n in fresh if docblocks.normalise(on_page.get(n, "")) != docblocks.normalise(fresh[n])]
    for name in stale:
        print(f"stale transcript: {name}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
