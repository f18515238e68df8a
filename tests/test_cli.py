"""The command line as installed: ``kdsignal --version``, and the packaging files it ships with (LICENSE,
py.typed)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from tests.support import ROOT


def test_version_flag():
    """``kdsignal --version`` prints the installed version and exits 0."""
    res = subprocess.run([sys.executable, "-m", "daemon", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"kdsignal {version('kdsignal')}"


def test_license_and_py_typed_ship():
    """The MIT licence is at the root and both packages are marked typed (PEP 561)."""
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "daemon" / "py.typed").exists() and (ROOT / "kernels" / "py.typed").exists()
    assert 'daemon = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
