"""``kernels/`` stays pure numba: no processes, no file system, no dynamic loading."""

from __future__ import annotations

import ast

import pytest

from tests.support import ROOT

# Modules whose import would let a kernel start processes, write files or load code at run time.
FORBIDDEN = {"os", "subprocess", "shutil", "tempfile", "importlib", "ctypes", "multiprocessing", "numba.pycc"}


def imported_modules(path) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` statement in ``path`` names (at any depth)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernel_module_imports_nothing_that_does_io(path):
    """No module in kernels/ imports os, subprocess or another process, file or loader module."""
    bad = {n for n in imported_modules(path) if n in FORBIDDEN or n.split(".")[0] in FORBIDDEN}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_sees_an_os_import(tmp_path):
    """The scan finds ``import os`` and ``from os import path`` inside a function body."""
    sample = tmp_path / "k.py"
    sample.write_text("def f():\n    import os\n    from subprocess import run\n")
    assert {"os", "subprocess"} <= imported_modules(sample)
