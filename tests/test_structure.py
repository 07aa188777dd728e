"""The layout rules of DESIGN.md, checked on the source with ``ast``.

The import graph counts every import a module can execute: at the top, inside
functions, relative ones, and ``importlib.import_module("...")`` with a literal
name. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module,
else to the package's ``__init__``; when the package's ``__init__`` has a lazy
table (``_LAZY = {"name": "module", ...}``) the edge also goes to the module the
name is loaded from. Imports under ``if TYPE_CHECKING:`` never run, so they are
left out of the cycle check but still count for the layering rules. A parent
package's ``__init__`` is not an edge of its submodules (Python runs it first
anyway, and every package would then "import" all of its siblings).

Each rule is its own test case, so a failure names the rule and every offender.
The checker itself is tested on small synthetic trees at the bottom.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "amorsize"
#: Plugin packages: every ``plugins/<name>/<package>/__init__.py``.
PLUGIN_ROOTS = sorted(p.parent for p in ROOT.glob("plugins/*/*/__init__.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
#: What ``amorsize.dlq.*`` must never import: the DLQ stores failures, it does not run work.
DLQ_FORBIDDEN = ("amorsize.executor", "amorsize.run", "amorsize.backends", "amorsize.replay")


@dataclass(frozen=True)
class Import:
    """One import statement (or one name of a plain ``import a, b``)."""

    source: str
    target: str  #: absolute dotted name of the module imported from
    names: tuple[str, ...]  #: names taken by ``from target import ...``; () for ``import``
    line: int
    type_only: bool


@dataclass
class Tree:
    """The modules under the scanned roots and every import they make."""

    files: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)
    lazy: dict[str, dict[str, str]] = field(default_factory=dict)  #: package -> name -> module
    syntax: dict[str, ast.Module] = field(default_factory=dict)

    def resolve(self, imp: Import) -> set[str]:
        """The scanned modules ``imp`` loads directly (see the module docstring)."""
        targets: set[str] = set()
        for name in imp.names or ("",):
            full = f"{imp.target}.{name}" if name else imp.target
            if full in self.files:
                targets.add(full)
                continue
            owner = _longest_prefix(imp.target, self.files)
            if owner is not None:
                targets.add(owner)
            lazy_module = self.lazy.get(imp.target, {}).get(name)
            if lazy_module in self.files:
                targets.add(lazy_module)
        return targets

    def edges(self, *, runtime_only: bool) -> dict[str, set[str]]:
        """Module -> the scanned modules it imports."""
        graph: dict[str, set[str]] = {name: set() for name in self.files}
        for imp in self.imports:
            if not (runtime_only and imp.type_only):
                graph[imp.source] |= self.resolve(imp) - {imp.source}
        return graph


def _longest_prefix(dotted: str, known: Iterable[str]) -> str | None:
    """The longest dotted prefix of ``dotted`` (itself included) that is in ``known``."""
    parts = dotted.split(".")
    known = set(known)
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Resolve a relative ``from`` import to an absolute dotted name."""
    if level == 0:
        return target or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def _imports_of(module: str, is_package: bool, syntax: ast.Module) -> list[Import]:
    """Every import in ``syntax``, marking those under ``if TYPE_CHECKING:``."""
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, (), node.lineno, type_only) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node.level, node.module)
            names = tuple(a.name for a in node.names)
            found.append(Import(module, target, names, node.lineno, type_only))
        elif isinstance(node, ast.Call) and _literal_import(node):
            name = node.args[0].value  # type: ignore[attr-defined]
            found.append(Import(module, name, (), node.lineno, type_only))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(syntax, False)
    return found


def _literal_import(call: ast.Call) -> bool:
    """``importlib.import_module("x")`` or ``__import__("x")`` with a literal name."""
    func = call.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))
    return named and bool(call.args) and isinstance(call.args[0], ast.Constant) and isinstance(
        call.args[0].value, str)


def _lazy_table(syntax: ast.Module) -> dict[str, str]:
    """A package ``__init__``'s ``_LAZY = {"name": "module"}`` table, if it has one."""
    for node in syntax.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        value = getattr(node, "value", None)
        if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets) and isinstance(
                value, ast.Dict):
            return {k.value: v.value for k, v in zip(value.keys, value.values)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def scan(roots: Iterable[Path]) -> Tree:
    """Parse every module under each package directory in ``roots``."""
    tree = Tree()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            parts = [root.name, *path.relative_to(root).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            syntax = ast.parse(path.read_text(encoding="utf-8"), str(path))
            tree.files[module] = path
            tree.syntax[module] = syntax
            tree.imports.extend(_imports_of(module, is_package, syntax))
            if is_package:
                tree.lazy[module] = _lazy_table(syntax)
    return tree


def _in(module: str, package: str) -> bool:
    """``module`` is ``package`` or inside it."""
    return module == package or module.startswith(package + ".")


# --- the rules: each returns its violations, one line each -----------------------


def find_cycles(tree: Tree, package: str = CORE) -> list[str]:
    """One import cycle per strongly connected group of ``package``'s modules."""
    graph = {m: {t for t in ts if _in(t, package)}
             for m, ts in tree.edges(runtime_only=True).items() if _in(m, package)}
    cycles: list[str] = []
    done: set[str] = set()
    for start in sorted(graph):
        path = _cycle_from(graph, start, done)
        if path:
            cycles.append(" -> ".join(path))
            done.update(path)
    return cycles


def _cycle_from(graph: dict[str, set[str]], start: str, done: set[str]) -> list[str]:
    """A cycle reachable from ``start`` avoiding ``done``, as a closed path; [] if none."""
    stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
    on_path = {start: 0}
    seen = {start}
    while stack:
        node, todo = stack[-1]
        if not todo:
            stack.pop()
            del on_path[node]
            continue
        nxt = todo.pop(0)
        if nxt in on_path:
            trail = [n for n, _ in stack][on_path[nxt]:]
            return [*trail, nxt]
        if nxt not in seen and nxt not in done:
            seen.add(nxt)
            on_path[nxt] = len(stack)
            stack.append((nxt, sorted(graph[nxt])))
    done.update(seen)
    return []


def long_modules(tree: Tree, limit: int = MAX_MODULE_LINES) -> list[str]:
    """Modules over ``limit`` lines."""
    out = []
    for module, path in sorted(tree.files.items()):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            out.append(f"{module}: {lines} lines > {limit}")
    return out


def long_functions(tree: Tree, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions and methods over ``limit`` lines, docstring included (decorators not)."""
    out = []
    for module, syntax in sorted(tree.syntax.items()):
        for node in ast.walk(syntax):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    out.append(f"{module}:{node.lineno} {node.name}(): {lines} lines > {limit}")
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def plugin_private_imports(tree: Tree, core: str = CORE) -> list[str]:
    """Imports of a private ``core`` module or name from any module outside ``core``."""
    out = []
    for imp in tree.imports:
        if _in(imp.source, core) or not _in(imp.target, core):
            continue
        bad = [p for p in imp.target.split(".") if _private(p)] + [
            n for n in imp.names if _private(n)]
        if bad:
            names = f" import {', '.join(imp.names)}" if imp.names else ""
            out.append(f"{imp.source}:{imp.line} from {imp.target}{names} (private: {bad})")
    return out


def forbidden_imports(tree: Tree, source: str, forbidden: Iterable[str]) -> list[str]:
    """Imports from ``source`` (a package or module) of anything under ``forbidden``."""
    out = []
    for imp in tree.imports:
        if not _in(imp.source, source):
            continue
        loaded = tree.resolve(imp) | {imp.target}
        target_file = tree.files.get(imp.target)
        if target_file is None or target_file.name == "__init__.py":
            # A name taken from a package may be a module missing from this tree.
            loaded |= {f"{imp.target}.{n}" for n in imp.names}
        for bad in forbidden:
            hits = sorted(t for t in loaded if _in(t, bad))
            if hits:
                out.append(f"{imp.source}:{imp.line} imports {', '.join(hits)}")
    return out


def plugin_imports(tree: Tree, core: str = CORE) -> list[str]:
    """Imports of a plugin package (``amorsize_*``) from ``core``."""
    return [f"{imp.source}:{imp.line} imports {imp.target}" for imp in tree.imports
            if _in(imp.source, core) and imp.target.split(".")[0].startswith(core + "_")]


RULES: dict[str, Callable[[Tree], list[str]]] = {
    "no-import-cycle-in-amorsize": find_cycles,
    "modules-at-most-400-lines": long_modules,
    "functions-at-most-60-lines": long_functions,
    "plugins-import-only-public-amorsize": plugin_private_imports,
    "dlq-does-not-import-the-engine": lambda t: forbidden_imports(t, "amorsize.dlq", DLQ_FORBIDDEN),
    "amorsize-imports-no-plugin": plugin_imports,
}


@pytest.fixture(scope="module")
def project() -> Tree:
    """The real source tree: amorsize/ and every plugin package."""
    return scan([ROOT / CORE, *PLUGIN_ROOTS])


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layout_rule(project: Tree, rule: str) -> None:
    violations = RULES[rule](project)
    assert not violations, f"rule {rule!r} is broken by:\n  " + "\n  ".join(violations)


def test_the_scan_sees_the_project(project: Tree) -> None:
    assert "amorsize" in project.files and "amorsize.errors" in project.files
    assert any(_in(m, "amorsize_dask") for m in project.files), "the dask plugin was not scanned"
    assert project.lazy["amorsize"], "amorsize/__init__.py has no lazy table"


# --- the checker on synthetic trees ------------------------------------------------


def make(tmp_path: Path, files: dict[str, str]) -> Tree:
    """Write ``files`` (path -> source) under tmp_path and scan its packages."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    roots = [tmp_path / CORE, *sorted(p.parent for p in tmp_path.glob("plugins/*/*/__init__.py"))]
    return scan(roots)


def test_cycle_through_a_relative_import_inside_a_function(tmp_path: Path) -> None:
    tree = make(tmp_path, {
        "amorsize/__init__.py": "",
        "amorsize/a.py": "def f():\n    from . import b\n",
        "amorsize/b.py": "from amorsize.c import x\n",
        "amorsize/c.py": "import amorsize.a\n",
    })
    assert find_cycles(tree) == ["amorsize.a -> amorsize.b -> amorsize.c -> amorsize.a"]


def test_cycle_through_a_package_init_and_a_lazy_table(tmp_path: Path) -> None:
    tree = make(tmp_path, {
        "amorsize/__init__.py": '_LAZY = {"run": "amorsize.engine"}\n',
        "amorsize/dlq/__init__.py": "from amorsize.dlq.queue import Q\n",
        "amorsize/dlq/queue.py": "from amorsize import run\nQ = 1\n",
        "amorsize/engine.py": "from amorsize.dlq import Q\n",
    })
    cycles = find_cycles(tree)
    assert len(cycles) == 1
    assert set(cycles[0].split(" -> ")) == {"amorsize.dlq", "amorsize.dlq.queue", "amorsize.engine"}


def test_no_cycle_from_type_checking_imports_or_acyclic_trees(tmp_path: Path) -> None:
    tree = make(tmp_path, {
        "amorsize/__init__.py": "",
        "amorsize/a.py": "import amorsize.b\n",
        "amorsize/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from amorsize.a import A\nelse:\n    import json\n",
    })
    assert find_cycles(tree) == []
    assert [i.type_only for i in tree.imports if i.source == "amorsize.b"] == [False, True, False]


def test_module_and_function_length_limits(tmp_path: Path) -> None:
    body = "".join(f"    x = {i}\n" for i in range(58))
    ok = 'def ok():\n    """Doc."""\n' + body  # 60 lines
    too_long = 'async def long():\n    """Doc."""\n' + body + "    return x\n"  # 61 lines
    method = "class C:\n    " + too_long.replace("\n    ", "\n        ").replace("async ", "")
    tree = make(tmp_path, {
        "amorsize/__init__.py": "",
        "amorsize/fine.py": ok + "\n" * (400 - ok.count("\n")),
        "amorsize/big.py": "\n" * 401,
        "amorsize/funcs.py": ok + too_long + method,
    })
    assert long_modules(tree) == ["amorsize.big: 401 lines > 400"]
    assert [v.split(" ")[1] for v in long_functions(tree)] == ["long():", "long():"]


def test_plugin_private_imports_are_caught(tmp_path: Path) -> None:
    tree = make(tmp_path, {
        "amorsize/__init__.py": "",
        "amorsize/_chunk.py": "import amorsize._other\n",  # the core may use its own privates
        "plugins/x/amorsize_x/__init__.py": (
            "from __future__ import annotations\nfrom amorsize.errors import AmorsizeError\n"
            "from amorsize_x._own import y\nfrom . import _own\nimport amorsize\n"),
        "plugins/x/amorsize_x/_own.py": (
            "from amorsize._chunk import run\nfrom amorsize.errors import _hidden\n"
            "def f():\n    import amorsize.sizing._costs\n    from amorsize import _table\n"),
    })
    found = plugin_private_imports(tree)
    assert [v.split(" ")[0] for v in found] == [f"amorsize_x._own:{n}" for n in (1, 2, 4, 5)]


def test_dlq_importing_the_engine_is_caught(tmp_path: Path) -> None:
    tree = make(tmp_path, {
        "amorsize/__init__.py": '_LAZY = {"execute": "amorsize.executor"}\n',
        "amorsize/executor.py": "",
        "amorsize/replay.py": "import amorsize.dlq\n",  # the other way round is fine
        "amorsize/run/__init__.py": "",
        "amorsize/run/options.py": "",
        "amorsize/dlq/__init__.py": "from amorsize.errors import E\n",
        "amorsize/dlq/a.py": "from ..executor import execute\n",
        "amorsize/dlq/b.py": "def f():\n    import amorsize.run.options\n",
        "amorsize/dlq/c.py": "from amorsize import replay\nfrom amorsize import execute\n",
        "amorsize/dlq/d.py": "import importlib\nimportlib.import_module('amorsize.backends.local')\n",
        "amorsize/dlq/e.py": "from amorsize.executorish import x\n",
    })
    found = forbidden_imports(tree, "amorsize.dlq", DLQ_FORBIDDEN)
    assert [v.split(" ")[0] for v in found] == [
        "amorsize.dlq.a:1", "amorsize.dlq.b:2", "amorsize.dlq.c:1", "amorsize.dlq.c:2",
        "amorsize.dlq.d:2"]


def test_core_importing_a_plugin_is_caught(tmp_path: Path) -> None:
    tree = make(tmp_path, {
        "amorsize/__init__.py": "",
        "amorsize/a.py": "def f():\n    import amorsize_dask.backend\n",
        "amorsize/b.py": "import amorsize.errors\n",
        "plugins/dask/amorsize_dask/__init__.py": "import amorsize\n",
    })
    assert plugin_imports(tree) == ["amorsize.a:2 imports amorsize_dask.backend"]
