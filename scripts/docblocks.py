"""Fenced code blocks of the Markdown pages, and the normaliser their outputs are compared with.

Shared by ``tests/test_docs.py`` (which runs every Python block) and
``scripts/gen_transcripts.py`` (which writes the CLI transcripts). The conventions:

* a ```` ```python ```` block is a script: it runs as written, alone, in a fresh
  directory. If its first line is a file name comment (``# etl.py``) it runs under
  that name, and the transcript script writes it to its session directory;
* an ```` ```output ```` block right after a Python block (blank lines between are
  fine) is what that script prints; ``...`` in it matches any text, as in doctest;
* a Python block whose first line starts with ``# not run:`` is not run; the rest of
  that line says why, visibly, on the page;
* ``<!-- transcript: NAME -->`` before a ```` ```console ```` block marks a CLI
  transcript that ``scripts/gen_transcripts.py`` writes from real runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = "# not run:"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<info>[^`]*)$")
_FILE_NAME = re.compile(r"^# (?P<name>[\w./-]+\.py)\s*$")
_TRANSCRIPT = re.compile(r"^\s*<!-- transcript: (?P<name>[\w-]+) -->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and its text (dedented)."""

    path: Path
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    lang: str
    text: str
    transcript: str | None = None  # the marker's name before a console block
    output: Block | None = None  # the ```output block right after a Python block

    @property
    def file_name(self) -> str | None:
        """The name from a first-line ``# name.py`` comment, if any."""
        first = self.text.split("\n", 1)[0]
        match = _FILE_NAME.match(first)
        return match.group("name") if match else None

    @property
    def not_run(self) -> bool:
        return self.text.startswith(NOT_RUN)

    @property
    def test_id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, with each Python block's output attached."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        marker = _previous_line(lines, i)
        named = _TRANSCRIPT.match(marker) if marker is not None else None
        lang = match.group("info").strip().split(" ")[0]
        found.append(Block(path, i + 1, end + 1, lang, "\n".join(body) + "\n",
                           transcript=named.group("name") if named else None))
        i = end + 1
    return _attach_outputs(found, lines)


def _previous_line(lines: list[str], i: int) -> str | None:
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return lines[j] if j >= 0 else None


def _attach_outputs(found: list[Block], lines: list[str]) -> list[Block]:
    out: list[Block] = []
    for block in found:
        if block.lang == "output" and out and out[-1].lang == "python":
            between = lines[out[-1].end:block.line - 1]
            if all(not line.strip() for line in between):
                prev = out.pop()
                out.append(Block(prev.path, prev.line, prev.end, prev.lang, prev.text, output=block))
                continue
        out.append(block)
    return out


def pages() -> list[Path]:
    """README.md and every page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# What changes from run to run, in the order it is replaced.
_VOLATILE = [
    (re.compile(r"\b[0-9a-f]{12,32}\b"), "<id>"),  # entry ids and their prefixes
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?"), "<time>"),
    (re.compile(r'"timestamp":\s*\d+(\.\d+)?'), '"timestamp":<time>'),
    (re.compile(r"\bpid[ =:]+\d+"), "pid <pid>"),
    (re.compile(r"'pid': \d+"), "'pid': <pid>"),
    (re.compile(r"/tmp/[\w.-]+"), "/tmp/<dir>"),
    # `dlq list` shows the shortest unique id prefix, 12 or 13 digits depending on how
    # close the entries' clocks were: the columns' padding and cuts move with it.
    (re.compile(r"\S*\.\.\.(?=  | *\n| *$)"), "..."),
    (re.compile(r"(?<=\S) {2,}"), "  "),
    # The column markers Python 3.11+ adds under a traceback line (3.10 has none).
    (re.compile(r"(\\n|\n)[ \t]*[~^]+[ \t]*(?=\\n|\n)"), ""),
]


def normalise(text: str) -> str:
    """Text with ids, times, pids, temporary paths and traceback markers made constant."""
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


def matches(expected: str, actual: str) -> bool:
    """True if normalised ``actual`` equals ``expected``, where ``...`` matches any text."""
    pattern = ".*?".join(re.escape(part) for part in normalise(expected).split("..."))
    return re.fullmatch(pattern, normalise(actual), flags=re.DOTALL) is not None
