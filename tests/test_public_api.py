"""The public names of ``amorsize``: all exported, all loaded lazily, and ``import amorsize`` stays light.

Each check runs in a fresh interpreter, since this test process has long since
imported everything.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import amorsize

INIT = Path(amorsize.__file__)
#: Heavy or process-starting modules a bare ``import amorsize`` must not load.
MUST_NOT_LOAD = ("multiprocessing.managers", "psutil", "cloudpickle", "concurrent.futures.process",
                 "tblib", "dask", "distributed")
#: Seconds a fresh interpreter may take for one check (a loaded machine is slow).
SUBPROCESS_TIMEOUT = 60


def run_python(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a fresh interpreter (cache dir in tmp_path); return its stdout."""
    env = {**os.environ, "AMORSIZE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=env, cwd=INIT.parents[1], check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_amorsize_loads_no_submodule_and_nothing_heavy(tmp_path: Path) -> None:
    code = ("import sys; before = set(sys.modules); import amorsize; "
            "import json; print(json.dumps(sorted(set(sys.modules) - before - {'json'})))")
    loaded = json.loads(run_python(code, tmp_path))
    ours = [m for m in loaded if m == "amorsize" or m.startswith("amorsize")]
    assert ours == ["amorsize"], f"import amorsize also loaded {ours}"
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in MUST_NOT_LOAD)]
    assert heavy == [], f"import amorsize loaded {heavy} (everything it loaded: {loaded})"


def test_every_public_name_resolves_and_is_listed(tmp_path: Path) -> None:
    code = (
        "import amorsize, json\n"
        "names = {n: getattr(amorsize, n).__module__ if hasattr(getattr(amorsize, n), '__module__')"
        " else None for n in amorsize.__all__ if n != '__version__'}\n"
        "missing = sorted(set(amorsize.__all__) - set(dir(amorsize)))\n"
        "try:\n    amorsize.no_such_name\n    unknown = 'resolved'\n"
        "except AttributeError as exc:\n    unknown = str(exc)\n"
        "print(json.dumps([names, missing, unknown]))\n")
    names, missing, unknown = json.loads(run_python(code, tmp_path))
    assert set(names) == set(amorsize.__all__) - {"__version__"}
    assert all(module and module.startswith("amorsize") for module in names.values()), names
    assert missing == []
    assert "no_such_name" in unknown


def test_star_import_gives_every_public_name(tmp_path: Path) -> None:
    code = ("from amorsize import *\nimport amorsize\n"
            "print(all(n in globals() for n in amorsize.__all__))")
    assert run_python(code, tmp_path).strip() == "True"


def test_execute_loads_the_engine_on_first_access(tmp_path: Path) -> None:
    code = ("import sys, amorsize\nprint('amorsize.executor' in sys.modules)\n"
            "execute = amorsize.execute\nimport amorsize.executor as engine\n"
            "print('amorsize.executor' in sys.modules, execute is engine.execute)\n"
            "print(amorsize.execute(abs, [-1, -2, 3], n_jobs=1))")
    assert run_python(code, tmp_path).split("\n")[:3] == ["False", "True True", "[1, 2, 3]"]


def test_lazy_table_all_and_type_checking_block_agree() -> None:
    """The three lists of public names in __init__.py cannot drift apart."""
    syntax = ast.parse(INIT.read_text(encoding="utf-8"))
    lazy: dict[str, str] = {}
    checked: set[str] = set()
    for node in ast.walk(syntax):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_LAZY":
            assert isinstance(node.value, ast.Dict)
            lazy = {k.value: v.value for k, v in zip(node.value.keys, node.value.values)}  # type: ignore[union-attr]
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom) and child.module != "typing":
                    checked.update(alias.name for alias in child.names)
                    assert all(child.module == lazy.get(a.name) for a in child.names), (
                        f"{child.module} does not match the lazy table for {child.names}")
    assert lazy, "no _LAZY table found"
    assert checked == set(lazy)
    assert sorted(amorsize.__all__) == sorted([*lazy, "__version__"])


@pytest.mark.parametrize("name", ["WorkerCrashedError", "ItemTimeoutError", "OptimizerWarning",
                                  "AmorsizeWarning"])
def test_errors_and_warnings_are_exported_from_errors(name: str) -> None:
    from amorsize import errors

    value = getattr(amorsize, name)
    assert value is getattr(errors, name)
    root = amorsize.AmorsizeWarning if issubclass(value, Warning) else amorsize.AmorsizeError
    assert issubclass(value, root)


def test_every_error_and_warning_in_errors_is_public_and_rooted() -> None:
    from amorsize import errors

    defined = [value for name, value in vars(errors).items() if inspect.isclass(value)
               and value.__module__ == errors.__name__ and not name.startswith("_")]
    assert len(defined) > 10
    for value in defined:
        assert value.__name__ in amorsize.__all__, f"{value.__name__} is not exported"
        root = errors.AmorsizeWarning if issubclass(value, Warning) else errors.AmorsizeError
        assert issubclass(value, root), f"{value.__name__} does not derive from {root.__name__}"

