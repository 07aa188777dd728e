"""The DLQ's shape: what it may import (functions included), and one shared interface."""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, Set

import pytest

import amorsize
from amorsize import DeadLetterQueue, DeadLetterQueueBase, SharedDeadLetterQueue
from amorsize.dlq import base

PACKAGE = pathlib.Path(amorsize.__file__).parent

#: What runs work. The store must not know about it.
ENGINE = ("amorsize.executor", "amorsize.run", "amorsize.backends", "amorsize._chunk",
          "amorsize._workers", "amorsize.replay")


def _imports(path: pathlib.Path) -> Set[str]:
    """Every module ``path`` imports, at the top or inside a function, as dotted names."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _dlq_modules() -> Dict[str, Set[str]]:
    return {f"amorsize.dlq.{p.stem}": _imports(p) for p in sorted((PACKAGE / "dlq").glob("*.py"))}


def _under(name: str, prefixes: tuple) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_dlq_imports_nothing_that_runs_work() -> None:
    offenders = {
        module: sorted(n for n in names if _under(n, ENGINE))
        for module, names in _dlq_modules().items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_capture_never_imports_the_shared_queue() -> None:
    names = _dlq_modules()["amorsize.dlq.capture"]
    assert not any(_under(n, ("amorsize.dlq.shared",)) for n in names)
    # ...and imports only DLQ modules and the failure, retry and serialization helpers.
    allowed = ("amorsize.dlq", "amorsize.failure", "amorsize.retry", "amorsize.serialization",
               "amorsize.errors", "amorsize._validate")
    assert sorted(n for n in names if n.startswith("amorsize") and not _under(n, allowed)) == []


def test_no_module_imports_the_old_hook_module() -> None:
    assert not (PACKAGE / "hook.py").exists()
    for path in PACKAGE.rglob("*.py"):
        assert not any(_under(n, ("amorsize.hook",)) for n in _imports(path)), path


@pytest.mark.parametrize("queue_class", [DeadLetterQueue, SharedDeadLetterQueue])
def test_both_queues_share_one_implementation_of_the_common_api(queue_class: type) -> None:
    assert issubclass(queue_class, DeadLetterQueueBase)
    for name in ("add", "add_entry", "extend", "filter", "remove", "update", "__len__",
                 "__enter__", "__exit__"):
        assert getattr(queue_class, name) is getattr(DeadLetterQueueBase, name), name
    assert not queue_class.__abstractmethods__  # type: ignore[attr-defined]


def test_the_base_cannot_be_instantiated_without_a_store() -> None:
    with pytest.raises(TypeError):
        DeadLetterQueueBase()  # type: ignore[abstract]
    assert {"_store", "_update", "_select", "get_entries", "size"} <= set(
        base.DeadLetterQueueBase.__abstractmethods__
    )
