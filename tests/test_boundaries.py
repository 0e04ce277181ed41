"""The pure core stays pure: models/ imports only the standard library and pydantic, and reads no clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.py"))
IMPURE_MODULES = {
    "time",
    "random",
    "uuid",
    "os",
    "asyncio",
    "socket",
    "io",
    "pathlib",
    "secrets",
    "threading",
    "subprocess",
    "logging",
    "tempfile",
    "shutil",
    "sqlite3",
}
CLOCK_ATTRIBUTES = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}
IO_BUILTINS = {"open", "print", "input"}


def _imports(tree: ast.AST) -> set[str]:
    """Top-level packages imported; a relative import that climbs out of models/ (`from ..streams import
    x`, level 2 or more) counts as the package it names (`streams`), or as `..` when it names none."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            names.add(node.module.split(".")[0] if node.module else "..")
    return names


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_models_import_only_the_standard_library_and_pydantic(path: Path) -> None:
    """No streams/, faust, aiokafka or prometheus_client, and no module that does I/O or reads a clock."""
    imported = _imports(ast.parse(path.read_text()))
    foreign = {name for name in imported if name not in sys.stdlib_module_names and name != "pydantic"}
    assert foreign == set()
    assert imported & IMPURE_MODULES == set()


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_models_read_no_clock_and_do_no_io(path: Path) -> None:
    """No datetime.now()/today(), no time.*, no open()/print(): time only comes from events."""
    tree = ast.parse(path.read_text())
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert [ast.unparse(f) for f in calls if isinstance(f, ast.Attribute) and f.attr in CLOCK_ATTRIBUTES] == []
    assert [f.id for f in calls if isinstance(f, ast.Name) and f.id in IO_BUILTINS] == []


def test_the_boundary_check_sees_a_violation() -> None:
    """The checks above would catch an impure module (they are not vacuous), a relative import out of
    models/ included."""
    tree = ast.parse("import time\nfrom datetime import datetime\nx = datetime.now()\nprint(x)")
    assert "time" in _imports(tree) & IMPURE_MODULES
    climbing = _imports(ast.parse("from ..streams import clock\nfrom .. import streams\nfrom .wire import Tick"))
    assert {name for name in climbing if name not in sys.stdlib_module_names} == {"streams", ".."}
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert any(isinstance(f, ast.Attribute) and f.attr == "now" for f in calls)
