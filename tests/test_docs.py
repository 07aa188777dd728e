"""The documentation runs: every Python block of README.md and docs/, the CLI transcripts, the site.

Each Python block runs as a script (``python <file>``) in a fresh temporary
directory, in its own interpreter: the blocks start worker processes, and under the
spawn start method a worker re-imports ``__main__``, which only a real script file
with a ``__main__`` guard survives. Where a page shows the block's output, the
printed text must match it (ids, times, pids and temporary paths normalised; ``...``
matches anything). The conventions are in ``scripts/docblocks.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import docblocks
import gen_transcripts

PYTHON_BLOCKS = [b for page in docblocks.pages() for b in docblocks.blocks(page) if b.lang == "python"]
BLOCK_TIMEOUT_SECONDS = 90


@pytest.fixture(scope="session")
def cost_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One optimizer cost cache for every block, so machine costs are measured once."""
    return str(tmp_path_factory.mktemp("amorsize-cache"))


@pytest.mark.timeout(BLOCK_TIMEOUT_SECONDS + 30)
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.test_id for b in PYTHON_BLOCKS])
def test_python_block_runs(block, tmp_path, cost_cache, no_leaked_children):
    if block.not_run:
        reason = block.text.split("\n", 1)[0][len(docblocks.NOT_RUN):].strip()
        assert reason, f"{block.test_id}: '# not run:' must say why"
        assert block.output is None, f"{block.test_id}: a block that is not run cannot show output"
        pytest.skip(f"marked on the page as not run: {reason}")
    script = tmp_path / (block.file_name or "snippet.py")
    script.write_text(block.text, encoding="utf-8")
    env = dict(os.environ, AMORSIZE_CACHE_DIR=cost_cache, COLUMNS="100")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT_SECONDS)
    assert done.returncode == 0, f"{block.test_id} failed:\n{done.stdout}\n{done.stderr}"
    if block.output is not None:
        assert docblocks.matches(block.output.text, done.stdout), (
            f"{block.test_id}: the page shows\n{block.output.text}\nthe block printed\n{done.stdout}"
        )


def test_every_page_has_its_python_blocks_collected():
    # The collector found blocks on the pages that have them (a parser bug would find none).
    pages_with_blocks = {b.path.name for b in PYTHON_BLOCKS}
    assert {"README.md", "execute.md", "dlq.md", "shared-dlq.md", "cli.md"} <= pages_with_blocks


def test_output_blocks_follow_a_python_block():
    for page in docblocks.pages():
        stray = [b for b in docblocks.blocks(page) if b.lang == "output"]
        assert not stray, f"{page}: output blocks not right after a Python block: {[b.line for b in stray]}"


@pytest.mark.timeout(240)
def test_cli_transcripts_match_a_fresh_run(no_leaked_children):
    fresh = gen_transcripts.generate()
    assert fresh, "no transcript markers found"
    on_page = {b.transcript: b.text for b in docblocks.blocks(gen_transcripts.PAGE) if b.transcript}
    assert set(on_page) == set(fresh)
    for name, text in fresh.items():
        assert docblocks.normalise(on_page[name]) == docblocks.normalise(text), (
            f"transcript {name!r} is stale: run `python scripts/gen_transcripts.py`\n"
            f"--- on the page\n{on_page[name]}\n--- a fresh run\n{text}"
        )


@pytest.mark.timeout(180)
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs comes with the dev extra")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=docblocks.ROOT, capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "index.html").exists()


def test_nav_pages_exist():
    import yaml

    config = yaml.load((docblocks.ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    missing = [p for p in _nav_files(config["nav"]) if not (docblocks.ROOT / "docs" / p).exists()]
    # backends.md is written on the engine branch; every other page must be here.
    assert [p for p in missing if p != "backends.md"] == []


def _nav_files(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for v in nav.values() for f in _nav_files(v)]
    return [f for item in nav for f in _nav_files(item)]
