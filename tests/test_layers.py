"""The folders are layers: imports point one way between them, and no project module imports itself round a circle.

Read from the source (every ``import`` statement, also inside functions and ``TYPE_CHECKING`` blocks), so a
lazy import cannot hide a dependency. The rules (README, "Layout"):

- ``kernels`` imports nothing from ``daemon``;
- ``daemon.core`` imports only ``kernels`` and ``daemon.core``, and never asyncio, aiohttp or websockets;
- ``daemon.ops`` imports only ``daemon.core`` (and itself);
- ``daemon.aio`` imports ``daemon.core`` and ``daemon.ops``;
- ``daemon.tools`` imports ``daemon.core``, ``daemon.aio`` and ``daemon.ops``;
- ``daemon.training`` is imported by none of those four.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "daemon")

# folder -> project folders (besides itself and kernels) it may import
ALLOWED = {
    "daemon.core": set(),
    "daemon.ops": {"daemon.core"},
    "daemon.aio": {"daemon.core", "daemon.ops"},
    "daemon.tools": {"daemon.core", "daemon.aio", "daemon.ops"},
}
NO_ASYNC_IO = ("asyncio", "aiohttp", "websockets")


@cache
def modules() -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name)."""
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = modules()[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports (project modules resolved to the deepest existing name)."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    known = modules()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return frozenset(out)


def folder(module: str) -> str:
    """The layer a module belongs to: ``kernels``, ``daemon.core``, ``daemon.aio``, ... or ``daemon``."""
    parts = module.split(".")
    return parts[0] if parts[0] == "kernels" else ".".join(parts[:2])


def project_imports(module: str) -> set[str]:
    """The project modules ``module`` imports."""
    known = modules()
    return {m for m in imports(module) if m in known}


def test_the_walk_sees_every_layer():
    """The module table covers every folder the rules name, so an empty walk cannot pass them vacuously."""
    folders = {folder(m) for m in modules()}
    assert {"kernels", "daemon.core", "daemon.aio", "daemon.ops", "daemon.tools", "daemon.training"} <= folders
    assert "daemon.core.parser" in project_imports("daemon.aio.feed")


def test_kernels_import_nothing_from_daemon():
    """The numba kernels stand alone: arrays in, arrays out."""
    bad = {m: sorted(i for i in project_imports(m) if folder(i) != "kernels")
           for m in modules() if folder(m) == "kernels"}
    assert {m: v for m, v in bad.items() if v} == {}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_down(layer):
    """Each folder imports only the folders below it (and kernels)."""
    allowed = ALLOWED[layer] | {layer, "kernels"}
    bad = {m: sorted(i for i in project_imports(m) if folder(i) not in allowed)
           for m in modules() if folder(m) == layer}
    assert {m: v for m, v in bad.items() if v} == {}


def test_core_does_no_async_io():
    """The no-I/O core never imports asyncio, aiohttp or websockets."""
    bad = {m: sorted(i for i in imports(m) if i.split(".")[0] in NO_ASYNC_IO)
           for m in modules() if folder(m) == "daemon.core"}
    assert {m: v for m, v in bad.items() if v} == {}


@cache
def load_time_imports(module: str) -> frozenset[str]:
    """What importing ``module`` itself runs: imports at module level (also under a top-level if/try), not inside a
    function or class body, nor under ``TYPE_CHECKING``."""
    known = modules()
    out = set()

    def walk(stmts) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                out.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                walk(node.orelse)
                walk(node.finalbody)

    walk(ast.parse(known[module].read_text(encoding="utf-8")).body)
    return frozenset(out)


def loads_torch(module: str) -> bool:
    """Whether importing ``module`` imports torch, through any chain of module-level project imports."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        deps = load_time_imports(m)
        if any(d.split(".")[0] == "torch" for d in deps):
            return True
        todo += [d for d in deps if d in modules()]
    return False


def test_torch_stays_in_the_sequence_teacher():
    """Only daemon/training/sequence*.py import torch (the [seq] extra), and no other module loads it at import time:
    the daemon and the default training run work without torch installed."""
    importers = {m for m in modules() if any(i.split(".")[0] == "torch" for i in imports(m))}
    assert importers and all(m.startswith("daemon.training.sequence") for m in importers)
    top = {m for m in modules() if loads_torch(m)}
    assert top == {m for m in importers if any(i.split(".")[0] == "torch" for i in load_time_imports(m))}
    assert "daemon.training.train" not in top and "daemon.cli" not in top


def test_load_time_walk_skips_function_bodies():
    """The load-time walk sees train's module-level imports but not the sequence teacher it imports inside a function,
    which the full walk does see."""
    assert "daemon.training.sequence_eval" in imports("daemon.training.train")
    assert "daemon.training.sequence_eval" not in load_time_imports("daemon.training.train")
    assert "daemon.training.folds" in load_time_imports("daemon.training.train")
    assert "torch" in load_time_imports("daemon.training.sequence_net")
    assert "torch" not in load_time_imports("daemon.training.sequence_eval")


def test_no_import_circle():
    """No chain of imports between project modules leads back to where it started."""
    graph = {m: project_imports(m) - {m} for m in modules()}
    # A package's __init__ importing its own children is how packages work, not a circle.
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_rule_checks_catch_a_back_import(tmp_path):
    """The walk resolves relative and TYPE_CHECKING imports, so a back-import like the old supervision one shows."""
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..aio.service import Service\n"
    node = ast.parse(src).body[1].body[0]
    assert _resolve("daemon.ops.supervision", node) == "daemon.aio.service"
    assert folder("daemon.aio.service") not in ALLOWED["daemon.ops"] | {"daemon.ops", "kernels"}


# What a test module may import from tests/: the shared helpers and the NumPy reference, nothing else.
TEST_HELPER_MODULES = {"tests.support", "tests.naive"}


def imported_test_modules(path: Path) -> set[str]:
    """The ``tests.*`` modules a file under tests/ imports (``import tests.x``, ``from tests.x import ..``,
    ``from .x import ..``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "tests")
        elif isinstance(node, ast.ImportFrom):
            name = ("tests." + (node.module or "")).rstrip(".") if node.level else (node.module or "")
            if name.split(".")[0] == "tests":
                out.update(f"{name}.{a.name}" if f"{name}.{a.name}" in _test_modules() else name for a in node.names)
    return out


@cache
def _test_modules() -> frozenset[str]:
    return frozenset(f"tests.{p.stem}" for p in (ROOT / "tests").glob("*.py"))


def test_tests_import_helpers_only_from_support():
    """No test module (nor conftest) imports from another test module: shared helpers live in tests/support.py."""
    bad = {p.name: sorted(imported_test_modules(p) - TEST_HELPER_MODULES)
           for p in sorted((ROOT / "tests").glob("*.py"))}
    assert {name: v for name, v in bad.items() if v} == {}


def test_tests_import_check_sees_a_cross_import(tmp_path):
    """The check finds ``from tests.test_service import x``, ``from tests import conftest`` and a relative import."""
    sample = tmp_path / "test_x.py"
    sample.write_text("def f():\n    from tests.test_service import x\n"
                      "from tests import conftest\nfrom .naive import y\n")
    assert imported_test_modules(sample) == {"tests.test_service", "tests.conftest", "tests.naive"}


def readme_map_rows() -> list[str]:
    """The table rows of the README's "What is where" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## What is where"):]
    section = section[: section.index("\n## ", 1)]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_readme_map_names_every_module():
    """Each module of kernels/ and daemon/ is named in the README map's row for its folder (an ``__init__.py``
    that defines nothing excepted), and each row's folder or file exists."""
    rows = readme_map_rows()
    missing = []
    for path in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")):
        rel = path.relative_to(ROOT)
        body = ast.parse(path.read_text(encoding="utf-8")).body
        if path.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body):  # a docstring at most
            continue
        own = [r for r in rows if f"`{rel}`" in r.split("|")[1] or f"`{rel.parent}/`" in r.split("|")[1]]
        if not any(f"`{rel}`" in r or f"`{path.name}`" in r for r in own):
            missing.append(str(rel))
    assert missing == []
    named = [n for r in rows for n in re.findall(r"`([^`]+)`", r.split("|")[1])]
    assert [n for n in named if not (ROOT / n).exists()] == []
